//! `bootlun image build` on a synthetic kernel and module tree: what goes
//! into the image, the generated module indexes read back with
//! `ModIndex`, the three compressions, and the operator errors.

mod build_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bootlun_image::build::{self, BuildArgs, Compress, Fail};
use bootlun_image::cpio;
use bootlun_image::kmod::ModIndex;
use build_common::*;
use clap::Parser;

const VER: &str = "9.9.9-test";

/// The serve config check the CLI would pass: TOML with known keys only.
fn check(text: &str) -> Result<(), String> {
    let t: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    for k in t.keys() {
        if ![
            "lun",
            "listen",
            "ipxe-dir",
            "net-interface",
            "net-address",
            "pxe-interface",
        ]
        .contains(&k.as_str())
        {
            return Err(format!("unknown key {k}"));
        }
    }
    Ok(())
}

struct Tree {
    root: PathBuf,
    kernel: PathBuf,
    modules: PathBuf,
    firmware: PathBuf,
    ipxe: PathBuf,
    bin: PathBuf,
    config: PathBuf,
    virtio_net: Vec<u8>,
}

fn xz(b: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn put(p: &Path, b: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b).unwrap();
}

fn tree(name: &str) -> Tree {
    let root = scratch(name);
    let kernel = root.join("vmlinuz");
    put(&kernel, &fake_bzimage(VER));
    let m = root.join("lib/modules").join(VER);
    let virtio_net = make_ko(&[
        "alias=virtio:d00000001v*",
        "depends=net_failover",
        "name=virtio_net",
    ]);
    put(
        &m.join("kernel/drivers/net/virtio_net.ko.xz"),
        &xz(&virtio_net),
    );
    put(
        &m.join("kernel/drivers/net/net_failover.ko.zst"),
        &zstd::encode_all(&make_ko(&["depends=failover", "name=net_failover"])[..], 3).unwrap(),
    );
    put(
        &m.join("kernel/net/core/failover.ko"),
        &make_ko(&["depends=", "name=failover"]),
    );
    put(
        &m.join("kernel/fs/ext4/ext4.ko"),
        &make_ko(&[
            "alias=fs-ext4",
            "softdep=pre: crypto-crc32c",
            "depends=jbd2,mbcache,crc16",
            "firmware=test/fw.bin",
            "firmware=test/fw2.bin",
            "firmware=test/missing.bin",
            "firmware=../../etc/passwd",
            "name=ext4",
        ]),
    );
    put(&m.join("kernel/fs/jbd2/jbd2.ko"), &make_ko(&["name=jbd2"]));
    put(&m.join("kernel/fs/mbcache.ko"), &make_ko(&["name=mbcache"]));
    put(
        &m.join("kernel/crypto/crc32c_generic.ko"),
        &make_ko(&["name=crc32c_generic", "alias=crypto-crc32c"]),
    );
    put(
        &m.join("kernel/drivers/block/virtio_blk.ko"),
        &make_ko(&["name=virtio_blk", "description=in-tree"]),
    );
    put(
        &m.join("updates/virtio_blk.ko"),
        &make_ko(&["name=virtio_blk", "description=update"]),
    );
    put(
        &m.join("kernel/drivers/extra/my_extra.ko"),
        &make_ko(&["name=my_extra", "depends=jbd2"]),
    );
    put(
        &m.join("kernel/drivers/extra/unused.ko"),
        &make_ko(&["name=unused"]),
    );
    put(
        &m.join("modules.builtin"),
        b"kernel/lib/crc16.ko\nkernel/drivers/nvme/host/nvme.ko\n",
    );
    std::os::unix::fs::symlink("/nonexistent/build", m.join("build")).unwrap();
    let firmware = root.join("firmware");
    put(&firmware.join("test/fw.bin"), b"FW1");
    put(
        &firmware.join("test/fw2.bin.zst"),
        &zstd::encode_all(&b"FW2"[..], 3).unwrap(),
    );
    put(&root.join("etc/passwd"), b"secret");
    let ipxe = root.join("ipxe");
    put(&ipxe.join("undionly.kpxe"), b"UNDI");
    put(&ipxe.join("snponly.efi"), b"SNP");
    put(&ipxe.join("README"), b"not a binary");
    put(&ipxe.join("qemu/pxe-virtio.rom"), b"ROM");
    let bin = root.join("bootlun-static");
    put(&bin, &static_elf());
    let config = root.join("bootlun.toml");
    put(
        &config,
        format!(
            "# test\nlun = [\"ram:1G\"]\nipxe-dir = \"{}\"\nnet-interface = \"eth0\"\n",
            ipxe.display()
        )
        .as_bytes(),
    );
    Tree {
        root,
        kernel,
        modules: m,
        firmware,
        ipxe,
        bin,
        config,
        virtio_net,
    }
}

fn args(t: &Tree) -> BuildArgs {
    let mut a = BuildArgs::new(t.root.join("out"));
    a.config = Some(t.config.clone());
    a.kernel = Some(t.kernel.clone());
    a.modules_dir = Some(t.modules.clone());
    a.bootlun_bin = Some(t.bin.clone());
    a.busybox = Some("none".into());
    a.firmware_dir = Some(t.firmware.clone());
    a
}

fn usage_of(r: Result<build::Summary, Fail>) -> String {
    match r {
        Err(Fail::Usage(m)) => m,
        Err(Fail::Runtime(m)) => panic!("runtime failure, expected usage: {m}"),
        Ok(_) => panic!("build succeeded, expected a usage error"),
    }
}

#[test]
fn image_content_from_a_module_tree() {
    for compress in [Compress::Zstd, Compress::Gzip, Compress::None] {
        let t = tree(&format!("fixture-{compress:?}"));
        let mut a = args(&t);
        a.compress = compress;
        a.add_modules = vec!["my-extra".into()];
        let s = build::run(&a, &check).unwrap();
        let out = t.root.join("out");
        assert_eq!(s.kernel_version, VER);
        assert_eq!(
            std::fs::read(out.join("bootlun-kernel.bin")).unwrap(),
            fake_bzimage(VER)
        );
        let raw = std::fs::read(out.join("bootlun-initrd.img")).unwrap();
        match compress {
            Compress::Zstd => assert!(raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])),
            Compress::Gzip => assert!(raw.starts_with(&[0x1f, 0x8b])),
            Compress::None => assert!(raw.starts_with(b"070701")),
        }
        // Nothing half-written is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let e = entries(&out.join("bootlun-initrd.img"));
        assert_eq!(
            s.initrd_uncompressed as usize,
            initrd_bytes(&out.join("bootlun-initrd.img")).len()
        );
        let init = find(&e, "init");
        assert_eq!(
            (init.kind(), init.data.as_slice()),
            (cpio::S_IFLNK, &b"bin/bootlun"[..])
        );
        assert_eq!(find(&e, "bin/bootlun").data, static_elf());
        assert_eq!(find(&e, "bin/bootlun").mode & 0o777, 0o755);
        let con = find(&e, "dev/console");
        assert_eq!(
            (con.kind(), con.rdev_major, con.rdev_minor),
            (cpio::S_IFCHR, 5, 1)
        );
        let null = find(&e, "dev/null");
        assert_eq!(
            (null.kind(), null.rdev_major, null.rdev_minor),
            (cpio::S_IFCHR, 1, 3)
        );
        for d in ["proc", "sys", "dev", "run", "tmp", "mnt", "etc", "root"] {
            assert_eq!(find(&e, d).kind(), cpio::S_IFDIR, "{d}");
        }
        assert!(e
            .iter()
            .all(|x| x.name != "bin/busybox" && x.name != "bin/sh"));

        // The baked config points at the image's own iPXE copy.
        let cfg = String::from_utf8(find(&e, "etc/bootlun.toml").data.clone()).unwrap();
        let parsed: toml::Table = cfg.parse().unwrap();
        assert_eq!(parsed["ipxe-dir"].as_str(), Some("/usr/lib/ipxe"));
        assert_eq!(parsed["net-interface"].as_str(), Some("eth0"));
        assert!(cfg.starts_with("# test\n"));
        assert_eq!(find(&e, "usr/lib/ipxe/undionly.kpxe").data, b"UNDI");
        assert_eq!(find(&e, "usr/lib/ipxe/snponly.efi").data, b"SNP");
        assert!(!e
            .iter()
            .any(|x| x.name.contains("README") || x.name.ends_with(".rom")));
        assert_eq!(s.ipxe_files, ["snponly.efi", "undionly.kpxe"]);

        // Modules: the closure, decompressed, updates/ preferred.
        let base = format!("lib/modules/{VER}/");
        let mods: Vec<&str> = e
            .iter()
            .filter(|x| {
                x.kind() == cpio::S_IFREG && x.name.starts_with(&base) && x.name.contains(".ko")
            })
            .map(|x| &x.name[base.len()..])
            .collect();
        let mut expect = vec![
            "kernel/crypto/crc32c_generic.ko",
            "kernel/drivers/extra/my_extra.ko",
            "kernel/drivers/net/net_failover.ko",
            "kernel/drivers/net/virtio_net.ko",
            "kernel/fs/ext4/ext4.ko",
            "kernel/fs/jbd2/jbd2.ko",
            "kernel/fs/mbcache.ko",
            "kernel/net/core/failover.ko",
            "updates/virtio_blk.ko",
        ];
        expect.sort();
        let mut got = mods.clone();
        got.sort();
        assert_eq!(got, expect);
        assert_eq!(
            find(&e, &format!("{base}kernel/drivers/net/virtio_net.ko")).data,
            t.virtio_net
        );
        assert!(s.missing_modules.contains(&"igb".to_string()));
        assert!(!s.missing_modules.contains(&"nvme".to_string()));
        assert_eq!(s.builtin_modules, ["nvme"]);

        let dep = String::from_utf8(find(&e, &format!("{base}modules.dep")).data.clone()).unwrap();
        let ext4 = dep
            .lines()
            .find(|l| l.starts_with("kernel/fs/ext4/ext4.ko:"))
            .unwrap();
        assert!(
            ext4.contains("kernel/fs/jbd2/jbd2.ko") && ext4.contains("kernel/fs/mbcache.ko"),
            "{ext4}"
        );
        let alias =
            String::from_utf8(find(&e, &format!("{base}modules.alias")).data.clone()).unwrap();
        assert!(
            alias
                .lines()
                .any(|l| l == "alias virtio:d00000001v* virtio_net"),
            "{alias}"
        );

        // PID 1's reader understands what was written.
        let unpacked = t.root.join("unpacked");
        unpack_prefix(&e, "lib/", &unpacked);
        let idx = ModIndex::open(&unpacked.join(&base)).unwrap();
        assert_eq!(
            idx.load_order(&["virtio_net".into()]),
            ["failover", "net_failover", "virtio_net"]
        );
        let o = idx.load_order(&idx.resolve("fs-ext4"));
        assert_eq!(o.last().map(String::as_str), Some("ext4"));
        assert!(o.contains(&"jbd2".into()) && o.contains(&"mbcache".into()));
        // The soft dependency, named by a crypto alias, is in the image and loads first.
        assert!(
            o.iter().position(|m| m == "crc32c_generic").unwrap() < o.len() - 1,
            "{o:?}"
        );
        assert!(idx.is_builtin("crc16"));
        assert_eq!(
            idx.match_modalias("virtio:d00000001v00001AF4"),
            ["virtio_net"]
        );
        assert!(idx.path_of("virtio_net").unwrap().is_file());

        // Firmware: plain, decompressed, missing reported, never outside the dir.
        assert_eq!(find(&e, "lib/firmware/test/fw.bin").data, b"FW1");
        assert_eq!(find(&e, "lib/firmware/test/fw2.bin").data, b"FW2");
        assert!(!e.iter().any(|x| x.data == b"secret"));
        assert_eq!(s.firmware_files, 2);
        assert!(s.firmware_missing.contains(&"test/missing.bin".to_string()));

        assert!(s.bootlun_static);
        assert_eq!(s.config.as_deref(), Some(t.config.as_path()));
    }
}

#[test]
fn real_cpio_reads_the_image() {
    let t = tree("fixture-cpio-tool");
    let mut a = args(&t);
    a.compress = Compress::None;
    build::run(&a, &check).unwrap();
    let raw = std::fs::read(t.root.join("out/bootlun-initrd.img")).unwrap();
    let Some(names) = cpio_tool_list(&raw) else {
        return;
    };
    for n in [
        "init",
        "bin/bootlun",
        "etc/bootlun.toml",
        "dev/console",
        &format!("lib/modules/{VER}/modules.dep"),
    ] {
        assert!(names.iter().any(|x| x == n), "{n} not listed by cpio -it");
    }
}

#[test]
fn without_config_nothing_is_baked() {
    let t = tree("fixture-noconfig");
    let mut a = args(&t);
    a.config = None;
    a.ipxe_dir = Some(t.ipxe.clone());
    let s = build::run(&a, &|_| Err("must not be called".into())).unwrap();
    assert!(s.config.is_none());
    let e = entries(&t.root.join("out/bootlun-initrd.img"));
    assert!(!e.iter().any(|x| x.name == "etc/bootlun.toml"));
    assert_eq!(find(&e, "etc").kind(), cpio::S_IFDIR);
}

#[test]
fn static_busybox_gives_a_shell() {
    let t = tree("fixture-busybox");
    let mut a = args(&t);
    a.busybox = Some(t.bin.to_string_lossy().into_owned());
    let s = build::run(&a, &check).unwrap();
    assert!(s.busybox);
    let e = entries(&t.root.join("out/bootlun-initrd.img"));
    assert_eq!(find(&e, "bin/busybox").data, static_elf());
    assert_eq!(find(&e, "bin/sh").data, b"busybox");
}

#[test]
fn dynamic_bootlun_brings_its_loader_and_libraries() {
    if !have("ldd") {
        if skip_external() {
            eprintln!("skipping: ldd not installed (package libc-bin)");
            return;
        }
        panic!("ldd not found: apt-get install libc-bin (or BOOTLUN_SKIP_EXTERNAL=1)");
    }
    let t = tree("fixture-dynamic");
    let mut a = args(&t);
    // This test executable is dynamically linked and has symbols.
    let me = std::env::current_exe().unwrap();
    a.bootlun_bin = Some(me.clone());
    let s = build::run(&a, &check).unwrap();
    assert!(!s.bootlun_static);
    let e = entries(&t.root.join("out/bootlun-initrd.img"));
    let facts = build::elf::elf_facts(&std::fs::read(&me).unwrap()).unwrap();
    let interp = facts.interp.unwrap();
    assert!(find(&e, interp.trim_start_matches('/'))
        .data
        .starts_with(b"\x7fELF"));
    assert!(
        e.iter().any(|x| x.name.contains("libc.so")),
        "libc not copied"
    );
    let bin = &find(&e, "bin/bootlun").data;
    if have("strip") {
        assert!(s.bootlun_stripped);
        assert!(
            !build::elf::elf_facts(bin).unwrap().strippable,
            "symbols left in /bin/bootlun"
        );
        assert!(bin.len() < std::fs::metadata(&me).unwrap().len() as usize);
    }
}

#[test]
fn operator_errors_name_the_flag() {
    let t = tree("fixture-errors");

    // A config the serve parser refuses: exit 2 with its message.
    let bad = t.root.join("bad.toml");
    std::fs::write(&bad, "lun = [\"ram:1G\"]\nbogus = 1\n").unwrap();
    let mut a = args(&t);
    a.config = Some(bad.clone());
    assert_eq!(
        usage_of(build::run(&a, &check)),
        format!("--config {}: unknown key bogus", bad.display())
    );
    assert_eq!(build::main(&a, &check), ExitCode::from(2));

    let mut a = args(&t);
    a.config = Some(t.root.join("nope.toml"));
    assert!(usage_of(build::run(&a, &check)).starts_with(&format!(
        "--config {}: no such file",
        t.root.join("nope.toml").display()
    )));

    let mut a = args(&t);
    a.kernel = Some(PathBuf::from("/nonexistent/vmlinuz-x"));
    assert_eq!(
        usage_of(build::run(&a, &check)),
        "--kernel /nonexistent/vmlinuz-x: no such file"
    );
    assert_eq!(build::main(&a, &check), ExitCode::from(2));

    let mut a = args(&t);
    a.kernel = Some(t.config.clone());
    assert!(usage_of(build::run(&a, &check))
        .starts_with(&format!("--kernel {}: not a Linux", t.config.display())));

    let mut a = args(&t);
    a.modules_dir = Some(t.root.join("nodir"));
    assert!(usage_of(build::run(&a, &check)).starts_with("--modules-dir "));

    let mut a = args(&t);
    a.add_modules = vec!["no_such_mod".into()];
    assert!(
        usage_of(build::run(&a, &check)).starts_with("--add-modules no_such_mod: no such module")
    );

    let mut a = args(&t);
    a.add_modules = vec!["../x".into()];
    assert!(usage_of(build::run(&a, &check)).starts_with("--add-modules ../x: not a module name"));

    let mut a = args(&t);
    a.busybox = Some(
        std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
    );
    assert!(usage_of(build::run(&a, &check)).contains("dynamically linked"));

    let mut a = args(&t);
    a.bootlun_bin = Some(t.config.clone());
    assert!(usage_of(build::run(&a, &check)).starts_with("--bootlun-bin "));

    let mut a = args(&t);
    a.ipxe_dir = Some(t.root.join("noipxe"));
    assert!(usage_of(build::run(&a, &check)).starts_with("--ipxe-dir "));

    let mut a = args(&t);
    a.firmware_dir = Some(t.root.join("nofw"));
    assert!(usage_of(build::run(&a, &check)).starts_with("--firmware-dir "));

    let mut a = args(&t);
    a.kernel = None;
    a.modules_dir = None;
    a.kernel_deb = Some(t.config.clone());
    assert!(usage_of(build::run(&a, &check)).starts_with(&format!(
        "--kernel-deb {}: not a Debian package",
        t.config.display()
    )));

    // No output was produced by any of these.
    assert!(!t.root.join("out/bootlun-initrd.img").exists());
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    build: BuildArgs,
}

#[test]
fn clap_flags() {
    let e = Cli::try_parse_from(["x", "--kernel-deb", "a.deb", "--kernel", "/boot/vmlinuz"])
        .unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    let e = Cli::try_parse_from([
        "x",
        "--kernel-deb",
        "a.deb",
        "--modules-dir",
        "/lib/modules/x",
    ])
    .unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    let c = Cli::try_parse_from([
        "x",
        "--add-modules",
        "a,b-c",
        "--compress",
        "gzip",
        "--busybox",
        "none",
    ])
    .unwrap();
    assert_eq!(c.build.add_modules, ["a", "b-c"]);
    assert_eq!(c.build.compress, Compress::Gzip);
    assert_eq!(c.build.out, PathBuf::from("bootlun-image"));
    let d = Cli::try_parse_from(["x"]).unwrap();
    assert_eq!(d.build.compress, Compress::Zstd);
    assert!(Cli::try_parse_from(["x", "--compress", "lz4"]).is_err());
}

#[test]
fn same_inputs_same_bytes() {
    let t = tree("fixture-reproducible");
    let a = args(&t);
    build::run(&a, &check).unwrap();
    let first = std::fs::read(t.root.join("out/bootlun-initrd.img")).unwrap();
    build::run(&a, &check).unwrap();
    let second = std::fs::read(t.root.join("out/bootlun-initrd.img")).unwrap();
    assert!(first == second, "two builds of the same inputs differ");
}

// --- Synthetic Debian packages: layouts, compressions, hostile members. ---

fn tar_of(
    files: &[(&str, &[u8])],
    links: &[(&str, &str)],
    raw_names: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, name, target).unwrap();
    }
    // Names the tar crate's builder would refuse (`..`, absolute): written raw.
    for (name, data) in raw_names {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn deb(path: &Path, control: &str, data_name: &str, data: Vec<u8>) {
    let control_tar = gz(&tar_of(&[("./control", control.as_bytes())], &[], &[]));
    let mut a = ar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, body) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", control_tar),
        (data_name, data),
    ] {
        a.append(
            &ar::Header::new(name.as_bytes().to_vec(), body.len() as u64),
            &body[..],
        )
        .unwrap();
    }
}

#[test]
fn synthetic_packages() {
    let root = scratch("fixture-debs");
    let v = "7.7.7-x";
    let kernel = fake_bzimage(v);
    let vnet = make_ko(&["alias=virtio:d00000001v*", "name=virtio_net"]);
    let vnet_xz = xz(&vnet);
    let data = tar_of(
        &[
            (&format!("./boot/vmlinuz-{v}"), &kernel[..]),
            (&format!("./boot/config-{v}"), b"CONFIG_X=y"),
            (
                &format!("./usr/lib/modules/{v}/kernel/drivers/net/virtio_net.ko.xz"),
                &vnet_xz[..],
            ),
            (
                &format!("./usr/lib/modules/{v}/modules.builtin"),
                b"kernel/lib/crc16.ko\n",
            ),
            ("./usr/share/doc/x/changelog", b"x"),
        ],
        &[
            (
                &format!("./usr/lib/modules/{v}/kernel/evil.ko"),
                "/etc/passwd",
            ),
            (&format!("./usr/lib/modules/{v}/build"), "/usr/src/x"),
        ],
        &[
            (b"../../escaped", b"EVIL"),
            (b"/tmp/absolute-escape-bootlun-test", b"EVIL"),
        ],
    );
    let pkgs = root.join("pkgs");
    std::fs::create_dir_all(&pkgs).unwrap();
    let real = pkgs.join(format!("linux-image-{v}_1_amd64.deb"));
    deb(
        &real,
        &format!("Package: linux-image-{v}\nDepends: kmod\n"),
        "data.tar.zst",
        zstd::encode_all(&data[..], 3).unwrap(),
    );

    let mut a = BuildArgs::new(root.join("out"));
    a.kernel_deb = Some(real.clone());
    a.bootlun_bin = Some(root.join("bin"));
    put(&root.join("bin"), &static_elf());
    a.busybox = Some("none".into());
    a.firmware_dir = None;
    let s = build::run(&a, &|_| Ok(())).unwrap();
    assert_eq!(s.kernel_version, v);
    assert_eq!(s.modules, ["virtio_net"]);
    assert_eq!(
        std::fs::read(root.join("out/bootlun-kernel.bin")).unwrap(),
        kernel
    );
    let e = entries(&root.join("out/bootlun-initrd.img"));
    assert_eq!(
        find(
            &e,
            &format!("lib/modules/{v}/kernel/drivers/net/virtio_net.ko")
        )
        .data,
        vnet
    );
    assert!(!e
        .iter()
        .any(|x| x.name.contains("evil") || x.data == b"EVIL"));
    assert!(!root.join("out/escaped").exists() && !root.join("escaped").exists());
    assert!(!Path::new("/tmp/absolute-escape-bootlun-test").exists());
    let cache = root.join(format!("out/.cache/linux-image-{v}_1_amd64"));
    assert!(cache.join(".complete").is_file());
    assert!(
        !cache.join(format!("modules/{v}/kernel/evil.ko")).exists(),
        "symlink member written"
    );
    assert!(!cache.join(format!("modules/{v}/build")).exists());

    // A meta package alone: the error names the package to fetch.
    let lone = root.join("lone");
    std::fs::create_dir_all(&lone).unwrap();
    let meta_data = liblzma::encode_all(
        &tar_of(
            &[("./usr/share/doc/linux-image-amd64/copyright", b"c")],
            &[],
            &[],
        )[..],
        6,
    )
    .unwrap();
    let control = format!("Package: linux-image-amd64\nDepends: linux-image-{v} (= 1)\n");
    deb(
        &lone.join("linux-image-amd64_1_amd64.deb"),
        &control,
        "data.tar.xz",
        meta_data.clone(),
    );
    a.kernel_deb = Some(lone.join("linux-image-amd64_1_amd64.deb"));
    let m = usage_of(build::run(&a, &|_| Ok(())));
    assert!(
        m.contains(&format!("depends on linux-image-{v}"))
            && m.contains(&format!("apt-get download linux-image-{v}")),
        "{m}"
    );

    // Next to the package it names, the meta package is followed.
    deb(
        &pkgs.join("linux-image-amd64_1_amd64.deb"),
        &control,
        "data.tar.xz",
        meta_data,
    );
    a.kernel_deb = Some(pkgs.join("linux-image-amd64_1_amd64.deb"));
    assert_eq!(build::run(&a, &|_| Ok(())).unwrap().kernel_version, v);

    // A package without a kernel, and one that is not an ar archive.
    let none = root.join("nokernel.deb");
    deb(
        &none,
        "Package: x\n",
        "data.tar.gz",
        gz(&tar_of(&[("./etc/x", b"x")], &[], &[])),
    );
    a.kernel_deb = Some(none.clone());
    assert_eq!(
        usage_of(build::run(&a, &|_| Ok(()))),
        format!(
            "--kernel-deb {}: no boot/vmlinuz-* in this package",
            none.display()
        )
    );
    let trunc = root.join("trunc.deb");
    std::fs::write(&trunc, &std::fs::read(&real).unwrap()[..300]).unwrap();
    a.kernel_deb = Some(trunc.clone());
    assert!(usage_of(build::run(&a, &|_| Ok(())))
        .starts_with(&format!("--kernel-deb {}:", trunc.display())));
}
