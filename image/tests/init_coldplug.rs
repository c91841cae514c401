//! Coldplug against a fake sysfs tree and a fake module directory: rounds
//! until nothing new loads (a bus driver "creates" devices when loaded),
//! dependencies first, built-ins and loaded modules skipped, failures
//! reported, file system modules added, command-line options honoured.

use bootlun_image::init::{coldplug_in, modaliases};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bootlun-coldplug-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn device(sys: &Path, rel: &str, alias: &str) {
    let d = sys.join("devices").join(rel);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("modalias"), format!("{alias}\n")).unwrap();
}

#[test]
fn rounds_until_nothing_new() {
    let root = tmp("rounds");
    let sys = root.join("sys");
    let mods = root.join("modules");
    std::fs::create_dir_all(mods.join("kernel/fs/nls")).unwrap();
    std::fs::write(
        mods.join("modules.dep"),
        "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
         kernel/drivers/virtio/virtio.ko:\n\
         kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
         kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
         kernel/drivers/net/e1000e.ko:\n\
         kernel/drivers/acpi/button.ko:\n\
         kernel/drivers/input/evdev.ko:\n\
         kernel/drivers/gpu/nouveau.ko:\n\
         kernel/drivers/platform/broken.ko:\n\
         kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko\n\
         kernel/fs/jbd2/jbd2.ko:\n\
         kernel/fs/mbcache.ko:\n\
         kernel/fs/nls/nls_utf8.ko:\n\
         kernel/fs/nls/nls_cp437.ko:\n",
    )
    .unwrap();
    for n in ["nls_utf8.ko", "nls_cp437.ko"] {
        std::fs::write(mods.join("kernel/fs/nls").join(n), "").unwrap();
    }
    std::fs::write(
        mods.join("modules.alias"),
        "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
         alias virtio:d00000002v* virtio_blk\n\
         alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n\
         alias acpi*:LNXPWRBN:* button\n\
         alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev\n\
         alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau\n\
         alias platform:broken broken\n\
         alias fs-ext4 ext4\n",
    )
    .unwrap();
    std::fs::write(mods.join("modules.builtin"), "kernel/fs/vfat/vfat.ko\n").unwrap();

    device(
        &sys,
        "pci0000:00/0000:00:02.0",
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
    );
    device(
        &sys,
        "pci0000:00/0000:00:03.0",
        "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
    );
    device(
        &sys,
        "pci0000:00/0000:00:04.0",
        "pci:v000010DEd00001234sv00000000sd00000000bc03sc00i00",
    );
    device(&sys, "LNXSYSTM:00/LNXPWRBN:00", "acpi:LNXPWRBN:");
    device(&sys, "platform/broken.0", "platform:broken");
    device(&sys, "platform/nothing.0", "platform:nodriver");
    // A symlink loop must not be followed.
    std::os::unix::fs::symlink("..", sys.join("devices/pci0000:00/loop")).unwrap();
    assert_eq!(modaliases(&sys.join("devices")).len(), 6);

    let mut calls: Vec<(String, String)> = Vec::new();
    let sys2 = sys.clone();
    let mut load = |p: &Path, params: &str| -> std::io::Result<bool> {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        calls.push((name.clone(), params.to_string()));
        match name.as_str() {
            // The bus driver brings its devices, as the kernel would.
            "virtio_pci" => {
                device(
                    &sys2,
                    "pci0000:00/0000:00:02.0/virtio0",
                    "virtio:d00000002v00001AF4",
                );
                // And the power button's input device appears.
                device(
                    &sys2,
                    "LNXSYSTM:00/LNXPWRBN:00/input/input0",
                    "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw",
                );
                Ok(true)
            }
            "broken" => Err(std::io::Error::from_raw_os_error(libc::ENODEV)),
            "e1000e" => Ok(false), // raced: already loaded
            _ => Ok(true),
        }
    };
    // button is already in the kernel.
    let mut loaded = || HashSet::from(["button".to_string()]);
    let report = coldplug_in(
        &mods,
        &sys,
        "quiet modprobe.blacklist=nouveau virtio_blk.queue_depth=64 e1000e.debug=1",
        &mut load,
        &mut loaded,
    );
    let names: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} not loaded: {names:?}"))
    };
    // Dependencies first.
    assert!(pos("virtio") < pos("virtio_ring") && pos("virtio_ring") < pos("virtio_pci"));
    assert!(pos("jbd2") < pos("ext4") && pos("mbcache") < pos("ext4"));
    // Second round: devices created by the first.
    assert!(pos("virtio_pci") < pos("virtio_blk"));
    assert!(pos("virtio_pci") < pos("evdev"));
    assert!(names.contains(&"nls_utf8") && names.contains(&"nls_cp437"));
    // Skipped: blacklisted, built-in, already loaded.
    assert!(!names.contains(&"nouveau") && !names.contains(&"vfat") && !names.contains(&"button"));
    // Each module tried once.
    let unique: HashSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    // Options from the command line.
    assert!(calls.contains(&("virtio_blk".into(), "queue_depth=64".into())));
    assert!(calls.contains(&("e1000e".into(), "debug=1".into())));
    assert!(calls.contains(&("ext4".into(), "".into())));

    assert!(report.rounds >= 2 && report.rounds <= 4, "{report:?}");
    assert!(!report.loaded.contains(&"e1000e".to_string()));
    assert!(report.loaded.contains(&"virtio_blk".to_string()));
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, "broken");
    assert!(
        report.failed[0].1.contains("no hardware"),
        "{:?}",
        report.failed
    );
    let line = report.to_string();
    assert!(!line.contains('\n'));
    assert!(
        line.starts_with(&format!("modules: {} loaded in", report.loaded.len())),
        "{line}"
    );
    assert!(line.contains("1 failed: broken: "), "{line}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn no_module_index_is_reported_not_fatal() {
    let root = tmp("noindex");
    let r = coldplug_in(
        &root.join("nonexistent"),
        &root,
        "",
        &mut |_, _| panic!("nothing to load"),
        &mut HashSet::new,
    );
    assert!(r.loaded.is_empty());
    let s = r.to_string();
    assert!(
        s.starts_with("modules: no module index (") && s.ends_with("only built-in drivers"),
        "{s}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
