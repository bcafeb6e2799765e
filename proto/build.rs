//! Compiles `proto/*.proto` with protox (a pure-Rust protobuf compiler, so no `protoc` on the
//! machine) and generates tonic/prost code into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/raft.proto", "proto/admin.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
