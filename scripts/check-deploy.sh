#!/usr/bin/env bash
# Offline checks of the deployment files: docker-compose.yml parses (alone
# and with the local override), the Kubernetes manifests validate against
# the Kubernetes schemas (strict), the KEDA ScaledObject against KEDA's
# schema, and the ConfigMap carries the repository's pipeline.toml verbatim.
set -euo pipefail
cd "$(dirname "$0")/.."

# The compose file asks for an admin token of the user's own.
SLUICE_ADMIN_TOKEN=check docker-compose -f docker-compose.yml config -q
SLUICE_ADMIN_TOKEN=check docker-compose -f docker-compose.yml -f deploy/local/compose.yml config -q
echo "check-deploy: docker-compose.yml ok (alone and with deploy/local/compose.yml)"

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
kubernetes-validate --strict --quiet deploy/k8s/configmap.yaml deploy/k8s/deployment.yaml deploy/k8s/service.yaml deploy/k8s/hpa.yaml
echo "check-deploy: Kubernetes manifests ok"

(cd deploy/check && npm install --no-audit --no-fund --silent >/dev/null 2>&1 && node validate-keda.mjs ../k8s/keda-scaledobject.yaml)

python3 - <<'PY'
import sys, yaml
config_map = yaml.safe_load(open("deploy/k8s/configmap.yaml"))
if config_map["data"]["pipeline.toml"] != open("pipeline.toml").read():
    sys.exit("check-deploy: deploy/k8s/configmap.yaml does not carry pipeline.toml verbatim")
print("check-deploy: the ConfigMap carries pipeline.toml")
PY
