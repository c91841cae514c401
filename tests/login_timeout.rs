//! A connection that never logs in is closed after --login-timeout; a
//! logged-in session is not.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use testkit::*;

#[test]
fn silent_connections_are_dropped_after_the_login_timeout() {
    let mut server = Server::start(&["ram:16M"], &["--login-timeout", "1"]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();

    // A session that logs in first: its login timer runs out too, but it
    // must stay usable.
    let mut good = IscsiConn::connect(addr);
    good.login(&initiator_name("login-timeout"), DEFAULT_IQN)
        .unwrap();

    // A peer that connects and says nothing.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut b = [0u8; 1];
    match silent.read(&mut b) {
        Ok(0) => {}
        Ok(_) => panic!("the target sent data to a peer that never logged in"),
        Err(e) => panic!("silent connection not closed by the target: {e}"),
    }
    // The close and the log line come from different threads of the
    // target: wait for the line rather than reading the log once.
    assert!(
        server
            .log
            .wait_for(Duration::from_secs(10), |l| l
                .contains("no login within 1 s"))
            .is_some(),
        "{}",
        server.output()
    );

    good.test_unit_ready(0)
        .expect("logged-in session still served after the login timeout");
    server.stop();
}
