//! Command-line parsing (placeholder).
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(2)
}
