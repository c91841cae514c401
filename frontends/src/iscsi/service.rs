//! The iSCSI target as an engine service: how an accepted socket becomes
//! a connection. Kept apart from `target` so the shared state does not
//! depend on the connection driver (which depends on it).

use bootlun_engine::Service;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use super::conn::Conn;
use super::target::TargetShared;

/// The engine service that turns accepted sockets into iSCSI connections.
pub struct IscsiService {
    pub shared: Arc<TargetShared>,
}

impl Service for IscsiService {
    type Conn = Conn;
    fn connect(&self, stream: TcpStream, peer: SocketAddr, reactor: usize) -> Conn {
        Conn::new(self.shared.clone(), stream, peer, reactor)
    }
}
