//! Writes `include/mapq_tail.h` from the library's code with cbindgen, so that the header
//! always matches the library it is built with (and CI fails if the committed one does not:
//! `git diff` shows it).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=lib.rs");
    println!("cargo:rerun-if-changed=sys.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("src/capi/cbindgen.toml");
    let header = std::path::Path::new(&dir).join("include/mapq_tail.h");
    match cbindgen::generate_with_config(&dir, config) {
        // Written only when it changed: an unchanged header keeps its time stamp.
        Ok(bindings) => {
            bindings.write_to_file(&header);
        }
        Err(e) => panic!("cbindgen could not read src/capi: {e}"),
    }
}
