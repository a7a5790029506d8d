//! Serving a router by itself, over plain HTTP or TLS (rustls), with graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// The certificate chain and private key of a TLS server, as PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub certificate_chain: PathBuf,
    /// The private key.
    pub private_key: PathBuf,
}

impl TlsFiles {
    fn server_config(&self) -> std::io::Result<ServerConfig> {
        let invalid = |what: &PathBuf, e: &dyn std::fmt::Display| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: {e}", what.display()),
            )
        };
        let chain = CertificateDer::pem_file_iter(&self.certificate_chain)
            .map_err(|e| invalid(&self.certificate_chain, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&self.certificate_chain, &e))?;
        if chain.is_empty() {
            return Err(invalid(
                &self.certificate_chain,
                &"no certificate in the file",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.private_key)
            .map_err(|e| invalid(&self.private_key, &e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&self.certificate_chain, &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(&self.private_key, &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A running server.
#[derive(Debug)]
pub struct ApiServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl ApiServer {
    /// The address it listens on (the port chosen when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.stop.cancel();
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Accepts TCP connections and completes their TLS handshakes concurrently (a slow client
/// never holds up the others), handing over the established streams.
struct TlsListener {
    local_addr: SocketAddr,
    established: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    fn start(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, established) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local_addr,
            established,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.established.recv().await {
            Some(established) => established,
            // Stopped: nothing more will come; graceful shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Serves `router` on `addr` (port 0 picks a free port), over TLS when `tls` is given. Returns
/// once the socket is bound.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    tls: Option<&TlsFiles>,
) -> std::io::Result<ApiServer> {
    serve_on(TcpListener::bind(addr).await?, router, tls)
}

/// Serves `router` on a socket the caller bound, over TLS when `tls` is given.
pub fn serve_on(
    listener: TcpListener,
    router: Router,
    tls: Option<&TlsFiles>,
) -> std::io::Result<ApiServer> {
    let local_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let task = match tls {
        None => tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        ),
        Some(files) => {
            let acceptor = TlsAcceptor::from(Arc::new(files.server_config()?));
            let listener = TlsListener::start(listener, acceptor, stop.clone())?;
            tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.clone().cancelled_owned())
                    .into_future(),
            )
        }
    };
    Ok(ApiServer {
        local_addr,
        stop,
        task,
    })
}
