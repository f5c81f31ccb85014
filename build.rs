//! Chooses the platform code paths once, as one cfg, `linux_native`: set on
//! Linux unless the `portable` feature asks for the fallbacks macOS and the
//! BSDs take (so that they run in this project's tests on Linux). Windows
//! stops here with one message: oxloop has no Windows port yet.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(linux_native)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if std::env::var_os("CARGO_CFG_WINDOWS").is_some() {
        println!(
            "cargo::error=oxloop does not support Windows yet: it runs on Linux, macOS and \
             FreeBSD. On Windows use asyncio's own event loop (asyncio.run(main()) \
             without a loop_factory); docs/platforms.md has the plan for a Windows port."
        );
        return;
    }
    if os == "linux" && std::env::var_os("CARGO_FEATURE_PORTABLE").is_none() {
        println!("cargo::rustc-cfg=linux_native");
    }
}
