fn main() {
    // Links the post-processed hermit-kernel 0.11 archive, as the `hermit` crate's build.rs does.
    let dist = std::env::var("HERMIT_DIST").unwrap_or_else(|_| "/tmp/hermit-lab/dist".into());
    println!("cargo:rustc-link-search=native={dist}");
    println!("cargo:rustc-link-lib=static=hermit");
    println!("cargo:rerun-if-changed={dist}/libhermit.a");
    println!("cargo:rerun-if-env-changed=HERMIT_DIST");
}
