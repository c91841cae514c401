//! `/`: the status page. Server-rendered tables and charts work without
//! JavaScript; a small inline script refreshes them from `/status.json`
//! every second.

use super::status::Snapshot;
use std::fmt::Write;

pub(crate) fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// `1.5 GiB`-style sizes.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub(crate) fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `3.0 MiB`, or `3.0 MiB of 12.0 MiB` while it is being sent.
fn transfer_bytes(t: &super::status::PxeTransferRow) -> String {
    if t.in_progress {
        format!("{} of {}", human_bytes(t.bytes), human_bytes(t.total))
    } else {
        human_bytes(t.bytes)
    }
}

/// The HTTP status (200 for a finished TFTP transfer), or `sending 25%`.
fn transfer_status(t: &super::status::PxeTransferRow) -> String {
    if t.in_progress {
        let pct = (t.bytes * 100).checked_div(t.total).unwrap_or(0);
        format!("sending {pct}%")
    } else if let Some(e) = &t.error {
        format!("failed: {e}")
    } else {
        t.status.to_string()
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

const W: f64 = 600.0;
const H: f64 = 120.0;

/// SVG polyline points of `v` scaled to the chart (last 300 s, right-aligned).
fn points(v: &[u64], max: u64) -> String {
    let n = super::status::HISTORY as f64;
    let max = max.max(1) as f64;
    let off = n - v.len() as f64;
    let mut s = String::new();
    for (i, x) in v.iter().enumerate() {
        let px = (off + i as f64) * W / n;
        let py = H - (*x as f64) * (H - 4.0) / max;
        let _ = write!(s, "{px:.1},{py:.1} ");
    }
    s
}

fn chart(id: &str, title: &str, a: (&str, &[u64]), b: (&str, &[u64]), unit: &str) -> String {
    let max = a.1.iter().chain(b.1).copied().max().unwrap_or(0);
    let fmt = |v: u64| {
        if unit == "B/s" {
            format!("{}/s", human_bytes(v))
        } else {
            format!("{v} {unit}")
        }
    };
    let now_a = a.1.last().copied().unwrap_or(0);
    let now_b = b.1.last().copied().unwrap_or(0);
    format!(
        r#"<figure><figcaption>{title}: <span class="r" id="{id}-a">{la} {na}</span> · <span class="w" id="{id}-b">{lb} {nb}</span> <small>(peak <span id="{id}-max">{mx}</span>, last 5 min)</small></figcaption>
<svg id="{id}" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="{title}"><rect width="{W}" height="{H}" class="bg"/><polyline class="r" points="{pa}"/><polyline class="w" points="{pb}"/></svg></figure>
"#,
        la = a.0,
        lb = b.0,
        na = fmt(now_a),
        nb = fmt(now_b),
        mx = fmt(max),
        pa = points(a.1, max),
        pb = points(b.1, max),
    )
}

const STYLE: &str = r#"body{font-family:system-ui,sans-serif;margin:0 auto;padding:.5em;max-width:70em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:.3em 0}h2{font-size:1.1em;margin:1em 0 .3em}
.tw{overflow-x:auto}table{border-collapse:collapse;font-size:.9em;min-width:100%}
th,td{border:1px solid #ccc;padding:.2em .4em;text-align:left;white-space:nowrap}th{background:#eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.5em 0}svg{width:100%;height:8em;display:block}rect.bg{fill:#fff;stroke:#ccc}
polyline{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}polyline.r{stroke:#1565c0}polyline.w{stroke:#c62828}
span.r{color:#1565c0}span.w{color:#c62828}.muted{color:#777}
"#;

const SCRIPT: &str = r#"(function(){
var N=300,W=600,H=120;
function hb(n){var u=['B','KiB','MiB','GiB','TiB'],i=0;while(n>=1024&&i<u.length-1){n/=1024;i++;}return i?n.toFixed(1)+' '+u[i]:n+' B';}
function pts(v,max){var s='',off=N-v.length;max=Math.max(max,1);for(var i=0;i<v.length;i++){s+=((off+i)*W/N).toFixed(1)+','+(H-v[i]*(H-4)/max).toFixed(1)+' ';}return s;}
function draw(id,a,b,la,lb,f){var m=0;a.concat(b).forEach(function(x){if(x>m)m=x;});
var svg=document.getElementById(id);if(!svg)return;var pl=svg.getElementsByTagName('polyline');
pl[0].setAttribute('points',pts(a,m));pl[1].setAttribute('points',pts(b,m));
document.getElementById(id+'-a').textContent=la+' '+f(a.length?a[a.length-1]:0);
document.getElementById(id+'-b').textContent=lb+' '+f(b.length?b[b.length-1]:0);
document.getElementById(id+'-max').textContent=f(m);}
function cell(t,num){var td=document.createElement('td');td.textContent=t;if(num)td.className='n';return td;}
function sessions(list){var tb=document.getElementById('sessions-body');if(!tb)return;
while(tb.firstChild)tb.removeChild(tb.firstChild);
if(!list.length){var tr=document.createElement('tr');var td=cell('no session logged in');td.colSpan=9;td.className='muted';tr.appendChild(td);tb.appendChild(tr);return;}
list.forEach(function(s){var tr=document.createElement('tr');tr.className='session';
[s.initiator,s.peer,s.reactor+' / core '+s.core,(s.header_digest?'CRC32C':'None')+' / '+(s.data_digest?'CRC32C':'None'),
s.initiator_max_recv_dsl+' / '+s.target_max_recv_dsl+', burst '+s.first_burst_length+' / '+s.max_burst_length,
s.uptime_secs+'s',hb(s.read_bytes),hb(s.write_bytes),s.commands].forEach(function(t,i){tr.appendChild(cell(String(t),i>=6));});
tb.appendChild(tr);});}
function hs(s){return s<60?s+'s':s<3600?Math.floor(s/60)+'m'+('0'+s%60).slice(-2)+'s':Math.floor(s/3600)+'h'+('0'+Math.floor(s%3600/60)).slice(-2)+'m';}
function fill(id,rows,cols,empty,cls){var tb=document.getElementById(id);if(!tb)return;
while(tb.firstChild)tb.removeChild(tb.firstChild);tb.setAttribute('data-live','1');
if(!rows.length&&empty){var tr=document.createElement('tr');var td=cell(empty);td.colSpan=cols;td.className='muted';tr.appendChild(td);tb.appendChild(tr);return;}
rows.forEach(function(r){var tr=document.createElement('tr');if(cls)tr.className=cls(r);
r.cells.forEach(function(c){tr.appendChild(cell(String(c[0]),c[1]));});tb.appendChild(tr);});}
function yn(b){return b?'yes':'no';}
function tables(d){
fill('luns-body',d.luns.map(function(l){return{cells:[[l.lun,1],[l.backend+(l.sanitize_percent!=null?' (sanitize '+l.sanitize_percent+'%)':'')],[hb(l.size_bytes),1],[l.block_size,1],[yn(l.read_only)],[l.write_cache?'write-back':'write-through'],[yn(l.thin)],[hb(l.read_bytes),1],[hb(l.write_bytes),1],[l.read_cmds+l.write_cmds,1],[l.errors,1]]};}),11,null,function(){return 'lun';});
fill('reactors-body',d.reactors.map(function(r){var p=r.busy_polls+r.idle_polls;return{cells:[[r.reactor,1],[r.core,1],[r.connections_open+' open / '+r.connections_total+' total',1],[hb(r.read_bytes),1],[hb(r.write_bytes),1],[r.busy_polls+' / '+r.idle_polls,1],[p?(r.busy_polls*100/p).toFixed(1)+'%':'-',1],[r.sleeps,1],[r.spin_window_us+' \u00b5s',1]]};}),9,null,function(){return 'reactor';});
if(!d.pxe)return;
fill('clients-body',d.pxe_clients.map(function(c){return{cells:[[c.mac||'-'],[c.ip||'-'],[c.stage],[c.detail]]};}),4,'no client seen yet',function(){return 'pxe-client';});
fill('leases-body',d.dhcp_leases.map(function(l){return{cells:[[l.client],[l.addr],[l.bound?'bound':'offered'],[l.expires_in_secs==null?'never':hs(l.expires_in_secs)]]};}),4,'none',function(){return 'lease';});
fill('transfers-body',d.pxe_transfers.slice().reverse().map(function(t){return{a:t.in_progress,cells:[[t.protocol],[t.peer],[t.file],[t.in_progress?hb(t.bytes)+' of '+hb(t.total):hb(t.bytes),1],[t.in_progress?'sending '+(t.total?Math.floor(t.bytes*100/t.total):0)+'%':t.error?'failed: '+t.error:t.status,1]]};}),5,'none yet',function(r){return r.a?'transfer active':'transfer';});}
function tick(){var x=new XMLHttpRequest();x.open('GET','/status.json');x.onload=function(){
if(x.status!==200)return;var d;try{d=JSON.parse(x.responseText);}catch(e){return;}var h=d.history;
draw('tp',h.read_bytes_per_sec,h.write_bytes_per_sec,'read','write',function(v){return hb(v)+'/s';});
draw('io',h.read_iops,h.write_iops,'read','write',function(v){return v+' IOPS';});
sessions(d.sessions);tables(d);var st=document.getElementById('live');if(st){st.textContent='live, updated '+new Date().toLocaleTimeString();st.setAttribute('data-live','1');}};
x.send();}
tick();setInterval(tick,1000);})();"#;

pub(crate) fn render(s: &Snapshot) -> String {
    let e = html_escape;
    let mut o = String::with_capacity(16384);
    let _ = write!(
        o,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>bootlun: {t}</title><style>{STYLE}</style></head><body>
<h1>bootlun {v}</h1>
<p>Target <b id="target">{t}</b> on portal <b>{p}</b>, up {up}. <span id="live" class="muted">static page (JavaScript off: reload to update)</span></p>
"#,
        t = e(&s.target),
        v = e(&s.version),
        p = e(&s.portal),
        up = human_secs(s.uptime_secs),
    );
    let h = &s.history;
    o.push_str(&chart(
        "tp",
        "Throughput",
        ("read", &h.read_bytes_per_sec),
        ("write", &h.write_bytes_per_sec),
        "B/s",
    ));
    o.push_str(&chart(
        "io",
        "IOPS",
        ("read", &h.read_iops),
        ("write", &h.write_iops),
        "IOPS",
    ));

    o.push_str("<h2>LUNs</h2><div class=\"tw\"><table><thead><tr><th>LUN</th><th>backend</th><th>size</th><th>block</th><th>read-only</th><th>write cache</th><th>thin</th><th>read</th><th>written</th><th>commands</th><th>errors</th></tr></thead><tbody id=\"luns-body\">\n");
    for l in &s.luns {
        let sanitize = l
            .sanitize_percent
            .map(|p| format!(" <small>(sanitize {p}%)</small>"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "<tr class=\"lun\"><td class=\"n\">{}</td><td>{}{sanitize}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            l.lun,
            e(&l.backend),
            human_bytes(l.size_bytes),
            l.block_size,
            yes(l.read_only),
            if l.write_cache { "write-back" } else { "write-through" },
            yes(l.thin),
            human_bytes(l.read_bytes),
            human_bytes(l.write_bytes),
            l.read_cmds + l.write_cmds,
            l.errors
        );
    }
    o.push_str("</tbody></table></div>\n");

    o.push_str("<h2>Sessions</h2><div class=\"tw\"><table><thead><tr><th>initiator</th><th>address</th><th>reactor</th><th>digests (header / data)</th><th>MaxRecvDataSegmentLength (initiator / target)</th><th>up</th><th>read</th><th>written</th><th>commands</th></tr></thead><tbody id=\"sessions-body\">\n");
    if s.sessions.is_empty() {
        o.push_str("<tr><td colspan=\"9\" class=\"muted\">no session logged in</td></tr>\n");
    }
    let dg = |b: bool| if b { "CRC32C" } else { "None" };
    for x in &s.sessions {
        let _ = writeln!(
            o,
            "<tr class=\"session\"><td>{}</td><td>{}</td><td>{} / core {}</td><td>{} / {}</td><td>{} / {}, burst {} / {}</td><td>{}s</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            e(&x.initiator),
            e(&x.peer),
            x.reactor,
            x.core,
            dg(x.header_digest),
            dg(x.data_digest),
            x.initiator_max_recv_dsl,
            x.target_max_recv_dsl,
            x.first_burst_length,
            x.max_burst_length,
            x.uptime_secs,
            human_bytes(x.read_bytes),
            human_bytes(x.write_bytes),
            x.commands
        );
    }
    o.push_str("</tbody></table></div>\n");

    o.push_str("<h2>Reactors</h2><div class=\"tw\"><table><thead><tr><th>reactor</th><th>core</th><th>connections</th><th>read</th><th>written</th><th>polls busy / idle</th><th>busy share</th><th>sleeps</th><th>spin window</th></tr></thead><tbody id=\"reactors-body\">\n");
    for r in &s.reactors {
        let polls = r.busy_polls + r.idle_polls;
        let share = if polls == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", r.busy_polls as f64 * 100.0 / polls as f64)
        };
        let _ = writeln!(
            o,
            "<tr class=\"reactor\"><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{} open / {} total</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{} / {}</td><td class=\"n\">{share}</td><td class=\"n\">{}</td><td class=\"n\">{} µs</td></tr>",
            r.reactor,
            r.core,
            r.connections_open,
            r.connections_total,
            human_bytes(r.read_bytes),
            human_bytes(r.write_bytes),
            r.busy_polls,
            r.idle_polls,
            r.sleeps,
            r.spin_window_us
        );
    }
    o.push_str("</tbody></table></div>\n");

    o.push_str("<h2>PXE</h2>\n");
    match &s.pxe {
        None => o.push_str("<p class=\"muted\">PXE services off (see --pxe-interface).</p>\n"),
        Some(p) => {
            let _ = writeln!(
                o,
                "<p>Serving on {} ({}). Boot menu entries:</p><div class=\"tw\"><table><thead><tr><th>id</th><th>title</th><th>version</th><th>kernel</th></tr></thead><tbody>",
                e(&p.interface),
                e(&p.server)
            );
            if p.boot_entries.is_empty() {
                o.push_str("<tr><td colspan=\"4\" class=\"muted\">none found</td></tr>\n");
            }
            for b in &p.boot_entries {
                let _ = writeln!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    e(&b.id),
                    e(&b.title),
                    e(b.version.as_deref().unwrap_or("")),
                    e(&b.kernel)
                );
            }
            o.push_str("</tbody></table></div>\n");
            o.push_str("<p>Clients (DHCP offer → iPXE → menu → kernel → initrd → iSCSI login):</p><div class=\"tw\"><table><thead><tr><th>MAC</th><th>address</th><th>stage reached</th><th>last step</th></tr></thead><tbody id=\"clients-body\">\n");
            if s.pxe_clients.is_empty() {
                o.push_str("<tr><td colspan=\"4\" class=\"muted\">no client seen yet</td></tr>\n");
            }
            for c in &s.pxe_clients {
                let _ = writeln!(
                    o,
                    "<tr class=\"pxe-client\"><td>{}</td><td>{}</td><td><b>{}</b></td><td>{}</td></tr>",
                    e(c.mac.as_deref().unwrap_or("-")),
                    e(c.ip.as_deref().unwrap_or("-")),
                    e(&c.stage),
                    e(&c.detail)
                );
            }
            o.push_str("</tbody></table></div>\n<p>DHCP leases:</p><div class=\"tw\"><table><thead><tr><th>client</th><th>address</th><th>state</th><th>expires in</th></tr></thead><tbody id=\"leases-body\">\n");
            if s.dhcp_leases.is_empty() {
                o.push_str("<tr><td colspan=\"4\" class=\"muted\">none</td></tr>\n");
            }
            for l in &s.dhcp_leases {
                let _ = writeln!(
                    o,
                    "<tr class=\"lease\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    e(&l.client),
                    e(&l.addr),
                    if l.bound { "bound" } else { "offered" },
                    l.expires_in_secs
                        .map(human_secs)
                        .unwrap_or_else(|| "never".into())
                );
            }
            o.push_str("</tbody></table></div>\n<p>Recent transfers:</p><div class=\"tw\"><table><thead><tr><th>protocol</th><th>client</th><th>file</th><th>bytes</th><th>status</th></tr></thead><tbody id=\"transfers-body\">\n");
            if s.pxe_transfers.is_empty() {
                o.push_str("<tr><td colspan=\"5\" class=\"muted\">none yet</td></tr>\n");
            }
            for t in s.pxe_transfers.iter().rev() {
                let _ = writeln!(
                    o,
                    "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    if t.in_progress { "transfer active" } else { "transfer" },
                    e(&t.protocol),
                    e(&t.peer),
                    e(&t.file),
                    transfer_bytes(t),
                    transfer_status(t)
                );
            }
            o.push_str("</tbody></table></div>\n");
        }
    }
    let _ = write!(
        o,
        "<p class=\"muted\">Also: <a href=\"/status.json\">status.json</a>, <a href=\"/metrics\">metrics</a>.</p>\n<script>{SCRIPT}</script>\n</body></html>\n"
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_units() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_secs(3725), "1h02m");
    }
}
