//! SendTargets discovery (RFC 7143 appendix C). (Placeholder.)

/// One target as advertised by SendTargets.
#[derive(Debug, Clone)]
pub struct TargetRecord<'a> {
    pub name: &'a str,
    /// Portals as `ADDR:PORT,TPGT` (IPv6 addresses in brackets).
    pub portals: &'a [String],
}

/// Answer a Text request's key=value text. `session_target` is the target
/// of a normal session (a SendTargets there may only report that target),
/// `None` in a discovery session. Appends the response text to `out`.
pub fn answer_text(
    request: &[u8],
    targets: &[TargetRecord<'_>],
    session_target: Option<&str>,
    out: &mut Vec<u8>,
) {
    let _ = (request, targets, session_target, out);
}
