//! Port exposure: which TCP ports of a sandbox the daemon forwards to, and
//! the byte streams to them.
//!
//! An exposure is a line in the sandbox's persisted record (so it survives
//! a daemon restart, and goes with the record when the sandbox is
//! destroyed). A stream to an exposed port is a TCP connection made by the
//! guest agent inside the sandbox to `127.0.0.1:PORT`, tunnelled over the
//! agent connection: it works in every network mode (`none` too) and on
//! every substrate, and needs no host port or firewall rule. Transports
//! (the HTTP reverse proxy, the raw TCP WebSocket) live in the server.
//!
//! Limits: at most [`MAX_EXPOSED_PORTS`] per sandbox; the service must
//! listen on IPv4 loopback inside the sandbox (`127.0.0.1`, `0.0.0.0`, or a
//! dual-stack `::`); a service bound only to `::1` or only to the
//! sandbox's external address is not reached.

use hull_api::{
    ApiError, ErrorKind, ExposePort, MAX_EXPOSED_PORTS, PortExposure, PortProtocol, SandboxState,
    check_port,
};

use crate::{DuplexStream, Runtime, guest_error, now, push_event, state};

impl Runtime {
    /// Expose `req.port` of a running or paused sandbox (idempotent: an
    /// existing exposure keeps its creation time and takes the requested
    /// protocol). Persisted before it returns. Returns the sandbox's id and
    /// the exposure.
    pub async fn expose_port(
        &self,
        id: &str,
        req: ExposePort,
    ) -> Result<(String, PortExposure), ApiError> {
        let port = check_port(req.port)?;
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        let st = e.state();
        if !matches!(st, SandboxState::Running | SandboxState::Paused) {
            return Err(ApiError::conflict(state::refusal(
                &e.id(),
                st,
                "expose a port of",
            )));
        }
        let out = {
            let mut r = e.record();
            if let Some(x) = r.ports.iter_mut().find(|x| x.port == port) {
                x.protocol = req.protocol;
                *x
            } else {
                if r.ports.len() >= MAX_EXPOSED_PORTS {
                    return Err(ApiError::new(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "sandbox {} already exposes {MAX_EXPOSED_PORTS} ports: remove one first",
                            r.sandbox.id
                        ),
                    ));
                }
                let x = PortExposure {
                    port,
                    protocol: req.protocol,
                    created_at: now(),
                };
                r.ports.push(x);
                r.ports.sort_by_key(|x| x.port);
                push_event(
                    &mut r,
                    "port_exposed",
                    format!("port {port} exposed ({})", req.protocol.as_str()),
                );
                x
            }
        };
        self.touch(&e);
        self.persist(&e)?;
        Ok((e.id(), out))
    }

    /// The sandbox's id and its exposed ports, by port (any state).
    pub async fn exposed_ports(&self, id: &str) -> Result<(String, Vec<PortExposure>), ApiError> {
        let e = self.lookup(id)?;
        let r = e.record();
        Ok((r.sandbox.id.clone(), r.ports.clone()))
    }

    /// Stop exposing `port` (open connections through it are not cut).
    pub async fn unexpose_port(&self, id: &str, port: u16) -> Result<(), ApiError> {
        let e = self.lookup(id)?;
        let _g = e.lifecycle.lock().await;
        {
            let mut r = e.record();
            let before = r.ports.len();
            r.ports.retain(|x| x.port != port);
            if r.ports.len() == before {
                return Err(ApiError::not_found(format!(
                    "port {port} of sandbox {} is not exposed",
                    r.sandbox.id
                )));
            }
            push_event(&mut r, "port_unexposed", format!("port {port} unexposed"));
        }
        self.persist(&e)
    }

    /// A fresh TCP connection to an exposed port of a running sandbox,
    /// with the sandbox's id and the exposure's protocol. Not exposed:
    /// `not_found`; nothing listening: `unavailable`.
    pub async fn port_stream(
        &self,
        id: &str,
        port: u16,
    ) -> Result<(String, PortProtocol, Box<dyn DuplexStream>), ApiError> {
        let e = self.lookup(id)?;
        let sid = e.id();
        let protocol = e
            .record()
            .ports
            .iter()
            .find(|x| x.port == port)
            .map(|x| x.protocol)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "port {port} of sandbox {sid} is not exposed \
                     (expose it first: POST /v1/sandboxes/{sid}/ports, or `hull expose {sid} {port}`)"
                ))
            })?;
        let (_, c) = self.running_client(&sid, "connect to a port of")?;
        let t = c.connect_tcp(port).await.map_err(|err| {
            let mut a = guest_error(&sid, err);
            if a.kind == ErrorKind::Unavailable && a.message.contains("in the sandbox") {
                a.message = format!(
                    "nothing listens on port {port} inside sandbox {sid} ({})",
                    a.message
                );
            }
            a
        })?;
        Ok((sid, protocol, Box::new(t)))
    }
}
