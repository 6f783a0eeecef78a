# A stand-in for the Kafka image of docker-compose.yml where no registry can
# be reached: the tansu broker (Kafka protocol, in-memory storage) that the
# tests use. Context: a folder holding the `tansu` binary
# (scripts/container.sh peers assembles it).
FROM debian:bookworm-slim
COPY tansu /usr/local/bin/tansu
USER 65534:65534
ENTRYPOINT ["tansu"]
CMD ["broker", "--storage-engine", "memory://tansu/"]
