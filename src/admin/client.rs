//! The CLI's side of the admin socket: one HTTP/1.1 request per call.

use std::path::Path;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket (or there is none): the daemon is not running.
    #[error("the daemon is not running (nothing answers on {socket}: {source})")]
    NotRunning { socket: String, source: std::io::Error },
    /// The daemon answered with an error.
    #[error("the daemon refused: {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Sends `method path` to the daemon listening on `socket`; returns the JSON it answered with.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
) -> Result<serde_json::Value, ClientError> {
    request_with(socket, method, path, None).await
}

/// [`request`] with a JSON body.
pub async fn request_with(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(source)
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning { socket: socket.display().to_string(), source });
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot connect to the admin socket {}", socket.display()))
                .into());
        }
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("admin socket: HTTP handshake")?;
    tokio::spawn(connection);
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "slotgate")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("admin socket: building the request")?;
    let response = sender.send_request(request).await.context("admin socket: request")?;
    let status = response.status();
    let body = response.into_body().collect().await.context("admin socket: reading the answer")?;
    let value: serde_json::Value =
        serde_json::from_slice(&body.to_bytes()).context("admin socket: the answer is not JSON")?;
    if !status.is_success() {
        let message = value["error"].as_str().unwrap_or("no reason given").to_owned();
        return Err(ClientError::Refused { status, message });
    }
    Ok(value)
}
