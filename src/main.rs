fn main() -> std::process::ExitCode {
    callosum::cli::main()
}
