//! A runtime on a private state directory.

use std::sync::Arc;

use hull_api::{CreateSandbox, ExecRequest, ExecResult, Limits, LimitsRequest, Sandbox};
use hull_runtime::{Runtime, RuntimeConfig};

use crate::{assert_host_clean, guest_binary, state_dir};

/// A [`Runtime`] on a private state directory. [`RuntimeKit::finish`]
/// resets it and asserts the host holds nothing of it; a test that fails
/// before `finish` still has everything removed when the kit drops.
pub struct RuntimeKit {
    pub rt: Arc<Runtime>,
    pub dir: tempfile::TempDir,
    backend: hull_runtime::BackendChoice,
    network: hull_runtime::NetworkConfig,
    finished: bool,
}

impl Drop for RuntimeKit {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let rt = self.rt.clone();
        // Drop may run inside a tokio runtime: work on a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(tokio) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            tokio.block_on(async {
                let _ = rt.system_reset().await;
                rt.shutdown().await;
            });
        })
        .join();
    }
}

impl RuntimeKit {
    /// A runtime with the snapshot backend `HULL_SNAPSHOT_BACKEND` names
    /// (`auto` when unset).
    pub async fn new() -> RuntimeKit {
        let backend = hull_runtime::BackendChoice::from_env()
            .expect("HULL_SNAPSHOT_BACKEND is auto, overlay or btrfs");
        Self::with_backend(backend).await
    }

    /// A runtime whose snapshot store uses `backend` (a btrfs one in a
    /// 4 GiB loop image when the state directory is not on btrfs).
    pub async fn with_backend(backend: hull_runtime::BackendChoice) -> RuntimeKit {
        Self::open(backend, Default::default()).await
    }

    /// A runtime with these network settings (e.g. a fake internet's DNS
    /// server as `dns_upstream` and its CA as `upstream_ca`).
    pub async fn with_network(network: hull_runtime::NetworkConfig) -> RuntimeKit {
        let backend = hull_runtime::BackendChoice::from_env()
            .expect("HULL_SNAPSHOT_BACKEND is auto, overlay or btrfs");
        Self::open(backend, network).await
    }

    async fn open(
        backend: hull_runtime::BackendChoice,
        network: hull_runtime::NetworkConfig,
    ) -> RuntimeKit {
        let dir = state_dir("hull-t");
        let rt = Runtime::open(Self::config(dir.path(), backend, &network))
            .await
            .expect("runtime opens");
        RuntimeKit {
            rt,
            dir,
            backend,
            network,
            finished: false,
        }
    }

    fn config(
        state: &std::path::Path,
        backend: hull_runtime::BackendChoice,
        network: &hull_runtime::NetworkConfig,
    ) -> RuntimeConfig {
        RuntimeConfig {
            state_dir: state.to_path_buf(),
            guest_binary: guest_binary(),
            defaults: Limits::default(),
            snapshots: hull_runtime::SnapshotStoreConfig {
                backend,
                image_bytes: Some(4 << 30),
            },
            network: network.clone(),
        }
    }

    /// Reopen the runtime on the same state directory (a daemon restart).
    pub async fn restart(&mut self) {
        self.rt.shutdown().await;
        self.rt = Runtime::open(Self::config(self.dir.path(), self.backend, &self.network))
            .await
            .expect("runtime reopens");
    }

    pub async fn create(&self, template: &str) -> Sandbox {
        self.create_with(template, LimitsRequest::default()).await
    }

    pub async fn create_with(&self, template: &str, limits: LimitsRequest) -> Sandbox {
        self.rt
            .create(CreateSandbox {
                template: Some(template.into()),
                limits,
                ..Default::default()
            })
            .await
            .expect("create")
    }

    /// `/bin/sh -c script` in a sandbox.
    pub async fn sh(&self, id: &str, script: &str) -> ExecResult {
        self.rt
            .exec(
                id,
                ExecRequest {
                    cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    ..Default::default()
                },
            )
            .await
            .expect("exec")
    }

    /// Reset everything and assert the host holds nothing of this instance.
    pub async fn finish(mut self) {
        let state = self.dir.path().to_path_buf();
        let instance = self.rt.host_info().instance_id;
        self.rt.system_reset().await.expect("reset");
        self.rt.shutdown().await;
        self.finished = true;
        assert_host_clean(&state, &instance);
        let left = crate::fakenet::net_leftovers(&instance);
        assert!(left.is_empty(), "network state left behind: {left:?}");
    }
}
