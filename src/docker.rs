//! Thin wrapper over bollard (docs/architecture.md#modules): connect with API version negotiation,
//! list, inspect, events and exec-with-timeout, with typed errors that name the container.
//!
//! The client sits behind a tiny std `RwLock` so discovery can swap in a freshly negotiated
//! connection after Docker comes back while the janitor and the probes keep a clone; the lock
//! is held only to clone or replace, never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerInspectResponse, ContainerSummary, EventMessage};
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use futures_util::{Stream, StreamExt};

use crate::model::id12;

/// Deadline for the short API calls (list, inspect, version); events are a long-lived stream.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to docker at {host}: {message}")]
    Connect { host: String, message: String },
    #[error("docker {call}: {message}")]
    Api { call: &'static str, message: String },
    #[error("docker {call} timed out after {}s", .after.as_secs_f64())]
    Timeout { call: &'static str, after: Duration },
    #[error("exec in container {id12} timed out after {}s", .after.as_secs_f64())]
    ExecTimeout { id12: String, after: Duration },
    #[error("exec in container {id12}: {message}")]
    Exec { id12: String, message: String },
    #[error("container {id12} not found")]
    NotFound { id12: String },
}

/// The answer to a call about one container, with its deadline: a 404 is
/// `DockerError::NotFound` naming the container.
fn on_container<T>(
    call: &'static str,
    id: &str,
    after: Duration,
    r: Result<Result<T, bollard::errors::Error>, tokio::time::error::Elapsed>,
) -> Result<T, DockerError> {
    match r {
        Err(_) => Err(DockerError::Timeout { call, after }),
        Ok(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => Err(DockerError::NotFound {
            id12: id12(id).to_string(),
        }),
        Ok(Err(e)) => Err(DockerError::Api {
            call,
            message: e.to_string(),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Output of a finished exec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Clone)]
pub struct DockerClient {
    host: Option<String>,
    inner: Arc<RwLock<Option<bollard::Docker>>>,
    /// The daemon's version, as its info last said (for `GET /agent`).
    version: Arc<RwLock<Option<String>>>,
}

impl DockerClient {
    /// A client not yet connected; `reconnect` makes it usable.
    pub fn new(host: Option<String>) -> DockerClient {
        DockerClient {
            host,
            inner: Arc::new(RwLock::new(None)),
            version: Arc::new(RwLock::new(None)),
        }
    }

    /// The Docker endpoint this client talks to, as configured or from `DOCKER_HOST`.
    pub fn endpoint(&self) -> String {
        self.describe_host()
    }

    fn describe_host(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
    }

    /// Connects and negotiates the API version: bollard asks for a newer API than Docker 20.10
    /// speaks, and every call is refused until the version is negotiated.
    pub async fn reconnect(&self) -> Result<(), DockerError> {
        let host = self.describe_host();
        let err = |m: String| DockerError::Connect {
            host: host.clone(),
            message: m,
        };
        let docker = match &self.host {
            Some(h) => bollard::Docker::connect_with_host(h),
            None => bollard::Docker::connect_with_defaults(),
        }
        .map_err(|e| err(e.to_string()))?;
        let docker = tokio::time::timeout(CALL_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| err("timed out negotiating the API version".into()))?
            .map_err(|e| err(e.to_string()))?;
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = Some(docker);
        Ok(())
    }

    /// Connects unless a connection is already there (discovery's, made or remade).
    pub async fn ensure_connected(&self) -> Result<(), DockerError> {
        if self.client().is_ok() {
            return Ok(());
        }
        self.reconnect().await
    }

    fn client(&self) -> Result<bollard::Docker, DockerError> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| DockerError::Connect {
                host: self.describe_host(),
                message: "not connected".into(),
            })
    }

    async fn call<T, F>(call: &'static str, f: F) -> Result<T, DockerError>
    where
        F: std::future::Future<Output = Result<T, bollard::errors::Error>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Err(_) => Err(DockerError::Timeout {
                call,
                after: CALL_TIMEOUT,
            }),
            Ok(Err(e)) => Err(DockerError::Api {
                call,
                message: e.to_string(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Running containers only: a stopped engine has no cache to clean and no streams.
    pub async fn list_running(&self) -> Result<Vec<ContainerSummary>, DockerError> {
        let c = self.client()?;
        let mut filters = HashMap::new();
        filters.insert("status".to_string(), vec!["running".to_string()]);
        let opts = ListContainersOptions {
            all: false,
            filters: Some(filters),
            ..Default::default()
        };
        Self::call("list containers", c.list_containers(Some(opts))).await
    }

    pub async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, DockerError> {
        let c = self.client()?;
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            c.inspect_container(id, None::<InspectContainerOptions>),
        )
        .await;
        on_container("inspect", id, CALL_TIMEOUT, r)
    }

    /// `POST /containers/{id}/restart?t=<stop_timeout>`: Docker stops the container (SIGTERM,
    /// SIGKILL after `stop_timeout`) and starts it again, and answers once it has. The deadline
    /// is the stop grace plus the short calls' own.
    pub async fn restart(&self, id: &str, stop_timeout: Duration) -> Result<(), DockerError> {
        let c = self.client()?;
        let t = i32::try_from(stop_timeout.as_secs()).unwrap_or(i32::MAX);
        let opts = bollard::query_parameters::RestartContainerOptions {
            t: Some(t),
            signal: None,
        };
        let after = stop_timeout + CALL_TIMEOUT;
        let r = tokio::time::timeout(after, c.restart_container(id, Some(opts))).await;
        on_container("restart", id, after, r)
    }

    /// The daemon's name for its host (`Name` of `docker info`: the machine's hostname, or what
    /// the daemon was configured to call itself), and its version, which is kept.
    pub async fn host_name(&self) -> Result<Option<String>, DockerError> {
        let c = self.client()?;
        let info = Self::call("info", c.info()).await?;
        *self.version.write().unwrap_or_else(PoisonError::into_inner) = info.server_version.clone();
        Ok(info.name.filter(|n| !n.is_empty()))
    }

    /// The daemon's version, once `host_name` has asked.
    pub fn server_version(&self) -> Option<String> {
        self.version
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `DockerRootDir` from `docker info`.
    pub async fn root_dir(&self) -> Result<Option<String>, DockerError> {
        let c = self.client()?;
        Ok(Self::call("info", c.info()).await?.docker_root_dir)
    }

    /// Container events since `since` (unix seconds), filtered to the actions discovery uses.
    pub fn events(
        &self,
        since: i64,
    ) -> Result<impl Stream<Item = Result<EventMessage, DockerError>> + use<>, DockerError> {
        let c = self.client()?;
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "event".to_string(),
            [
                "start", "die", "stop", "destroy", "rename", "pause", "unpause",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        );
        let opts = EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        };
        Ok(c.events(Some(opts)).map(|r| {
            r.map_err(|e| DockerError::Api {
                call: "events",
                message: e.to_string(),
            })
        }))
    }

    /// Runs `argv` in the container and collects its output, all within `timeout`.
    ///
    /// Docker cannot kill an exec: on timeout the process may go on inside the container. The
    /// exec id is returned in the error path through `exec_started` so callers can avoid
    /// piling up new execs behind a hung one.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
        exec_started: impl FnOnce(&str),
    ) -> Result<ExecOutput, DockerError> {
        let c = self.client()?;
        let short = id12(id).to_string();
        let exec_err = |m: String| DockerError::Exec {
            id12: short.clone(),
            message: m,
        };
        let run = async {
            let opts = CreateExecOptions {
                cmd: Some(argv.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            };
            let created = c.create_exec(id, opts).await.map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => DockerError::NotFound {
                    id12: short.clone(),
                },
                e => exec_err(e.to_string()),
            })?;
            exec_started(&created.id);
            let mut out = ExecOutput::default();
            match c
                .start_exec(&created.id, None::<StartExecOptions>)
                .await
                .map_err(|e| exec_err(e.to_string()))?
            {
                StartExecResults::Attached { mut output, .. } => {
                    while let Some(msg) = output.next().await {
                        match msg.map_err(|e| exec_err(e.to_string()))? {
                            bollard::container::LogOutput::StdOut { message } => {
                                out.stdout.push_str(&String::from_utf8_lossy(&message))
                            }
                            bollard::container::LogOutput::StdErr { message } => {
                                out.stderr.push_str(&String::from_utf8_lossy(&message))
                            }
                            _ => {}
                        }
                    }
                }
                StartExecResults::Detached => {}
            }
            let inspect = c
                .inspect_exec(&created.id)
                .await
                .map_err(|e| exec_err(e.to_string()))?;
            out.exit_code = inspect.exit_code.unwrap_or(-1);
            Ok(out)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(DockerError::ExecTimeout {
                id12: id12(id).to_string(),
                after: timeout,
            }),
        }
    }

    /// Whether an exec started earlier is still running (a hung `du` from a timed-out cleanup).
    pub async fn exec_running(&self, exec_id: &str) -> Result<bool, DockerError> {
        let c = self.client()?;
        let r = Self::call("inspect exec", c.inspect_exec(exec_id)).await?;
        Ok(r.running.unwrap_or(false))
    }
}
