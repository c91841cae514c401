//! RFC 7143 6.3.5: a login with the InitiatorName and ISID of a live
//! session (TSIH 0) reinstates it. The old session's connection is closed
//! so it cannot run queued commands after the new session's. A different
//! ISID is a separate session and is left alone.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn a_login_with_the_same_isid_closes_the_old_session() {
    let mut server = Server::start(&["ram:16M"], &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let name = initiator_name("reinstate");

    let mut old = IscsiConn::connect(addr);
    old.login(&name, DEFAULT_IQN).unwrap();
    old.test_unit_ready(0).unwrap();

    // Another session of the same initiator with its own ISID.
    let mut other = IscsiConn::connect(addr);
    other.isid[5] ^= 0x5a;
    other.login(&name, DEFAULT_IQN).unwrap();

    // The same initiator comes back (say, after a link loss) with the old
    // ISID and TSIH 0.
    let mut new = IscsiConn::connect(addr);
    new.isid = old.isid;
    new.login(&name, DEFAULT_IQN).unwrap();

    let verdict = old.expect_reject_or_close(Duration::from_secs(20));
    assert!(
        verdict
            .as_deref()
            .is_ok_and(|v| v.contains("closed") || v.contains("error")),
        "old connection of a reinstated session still open: {verdict:?}"
    );
    new.test_unit_ready(0).expect("the new session is served");
    other
        .test_unit_ready(0)
        .expect("a session with another ISID is left alone");
    assert!(
        server.output().contains("session reinstatement"),
        "{}",
        server.output()
    );
    server.stop();
}
