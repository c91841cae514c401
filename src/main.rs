//! The `bootlun` command line. Parsing and wiring only: the target lives in
//! `bootlun-frontends`, the engine in `bootlun-engine`, the PXE services in
//! `bootlun-pxe`.

mod admin;
mod bootentries;
mod cli;
mod config;
mod init;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
