//! The harness's WebSocket clients, sized for ten thousand of them.
//!
//! tungstenite's defaults give each socket a 128 KiB read buffer that it
//! allocates and zero-fills on the first read: at a race start, when every
//! bike sends its first message within the same second, 10,000 bikes
//! zeroed 1.3 GB, and that burst (memset and page faults were over half
//! the harness's CPU then) took the cores from the server it measures.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client socket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A bike's socket: its answers are a few dozen bytes.
pub async fn bike(url: &str) -> Result<Socket, Error> {
    connect(url, 4 * 1024).await
}

/// A viewer's socket: pushes are some 10 KB, read in a few chunks.
pub async fn viewer(url: &str) -> Result<Socket, Error> {
    connect(url, 16 * 1024).await
}

async fn connect(url: &str, read_buffer: usize) -> Result<Socket, Error> {
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        // Each message is written at once, as the defaults' flush did.
        .write_buffer_size(0);
    let (socket, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
    Ok(socket)
}
