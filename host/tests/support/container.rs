//! The Sluice image on a real Docker engine: `docker run` as a user runs it
//! (host network, read-only root, pipeline.toml and the plugins folder
//! mounted), and docker-compose.yml with the local stand-ins for the broker
//! and Redis. `scripts/container.sh prepare` starts the engine, builds the
//! images and sets `DOCKER_HOST` and `SLUICE_TEST_IMAGE`.

use super::process::HostEnv;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The uid the image runs as.
pub const UID: u32 = 10001;

/// The image under test, or `None` (after saying why) when the container
/// tests cannot run here.
pub fn image() -> Option<String> {
    match std::env::var("SLUICE_TEST_IMAGE") {
        Ok(image) => Some(image),
        Err(_) => {
            eprintln!(
                "skipped: SLUICE_TEST_IMAGE is not set; `make test` sets it when a Docker engine can be started \
                 (scripts/container.sh prepare builds the image)"
            );
            None
        }
    }
}

/// One container test at a time: each starts a host that compiles its
/// plugins, and two cores are shared with the broker.
/// (An async lock: the tests hold it across their awaits, each test on a
/// runtime of its own.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Runs `program` with `args`; panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    run_command(Command::new(program).args(args))
}

/// Runs `command` and returns what it printed; panics with its output when
/// it fails.
pub fn run_command(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{command:?}: {}\n{stdout}{stderr}", out.status);
    stdout.trim().to_string()
}

/// Runs `program` with `args` and returns what it did.
pub fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// `docker inspect --format FORMAT ID`.
pub fn inspect(id: &str, format: &str) -> String {
    run("docker", &["inspect", "--format", format, id])
}

/// A folder the container's uid owns, for the compiled-plugin cache.
pub struct CacheDir(pub PathBuf);

impl CacheDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(UID), Some(UID)).unwrap();
        Self(dir)
    }
}

impl Drop for CacheDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `sluice run` container, removed on drop.
pub struct Container {
    pub id: String,
    pub http_port: u16,
}

impl Container {
    /// `docker run` of `image` on the host network with a read-only root,
    /// `pipeline` mounted at /etc/sluice/pipeline.toml, `plugins` at
    /// /plugins (both read-only), `cache` at the cache volume, and `env`.
    pub fn start(image: &str, env: &HostEnv, pipeline: &Path, plugins: &Path, cache: &CacheDir) -> Self {
        let http_port = super::free_port();
        let mut args: Vec<String> = ["run", "--detach", "--network", "host", "--read-only", "--health-interval", "1s"]
            .map(String::from)
            .to_vec();
        args.push(format!("--volume={}:/etc/sluice/pipeline.toml:ro", pipeline.display()));
        args.push(format!("--volume={}:/plugins:ro", plugins.display()));
        args.push(format!("--volume={}:/var/lib/sluice/cache", cache.0.display()));
        for (key, value) in env.vars.iter().chain([(&"SLUICE_HTTP_ADDR".into(), &format!("127.0.0.1:{http_port}"))]) {
            args.push(format!("--env={key}={value}"));
        }
        args.push(image.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self { id: run("docker", &args), http_port }
    }

    /// `docker inspect` of this container.
    pub fn inspect(&self, format: &str) -> String {
        inspect(&self.id, format)
    }

    /// What the container logged.
    pub fn logs(&self) -> String {
        let out = output("docker", &["logs", &self.id]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Waits until Docker reports the image's health check as healthy.
    pub fn wait_healthy(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.inspect("{{.State.Status}} {{.State.Health.Status}}");
            if status == "running healthy" {
                return started.elapsed();
            }
            assert!(
                !status.starts_with("exited") && started.elapsed() < timeout,
                "container {status} after {:?}; health checks: {}\n{}",
                started.elapsed(),
                self.inspect("{{json .State.Health}}"),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The host's pid of the container's main process.
    pub fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().unwrap()
    }

    /// A GET on the admin API: status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        super::process::request(self.http_port, "GET", path)
    }

    /// The value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        super::process::metric(self.http_port, name)
    }

    /// Waits until `sluice_records_in_total` reaches `n`.
    pub fn wait_records_in(&self, n: u64, timeout: Duration) {
        super::process::wait_records_in(self.http_port, n, timeout, || self.logs());
    }

    /// `docker stop --time GRACE`: how long it took and the exit code.
    pub fn stop(&self, grace: Duration) -> (Duration, i32) {
        let started = Instant::now();
        run("docker", &["stop", "--time", &grace.as_secs().to_string(), &self.id]);
        (started.elapsed(), self.inspect("{{.State.ExitCode}}").parse().unwrap())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = output("docker", &["rm", "--force", "--volumes", &self.id]);
    }
}
