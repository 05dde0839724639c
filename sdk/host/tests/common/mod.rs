//! Shared by the host tests: the plugin components `./test.sh` builds.

/// The bytes of `plugins/…` component `name`, built for wasm32-wasip2 into the shared target dir.
pub fn wasm(name: &str) -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .unwrap();
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first: cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml",
            path.display()
        )
    })
}
