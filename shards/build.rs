//! Compiles proto/protocol.proto (the STAN client protocol) and proto/cluster.proto (stanza's
//! node-to-node messages) with protox (pure Rust) and prost, so building needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = [
        proto_dir.join("protocol.proto"),
        proto_dir.join("cluster.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&proto_dir])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
