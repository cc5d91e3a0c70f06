//! Generates the etcd v3 gRPC code from the vendored protos with `protox` (a pure-Rust
//! protobuf compiler), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/rpc.proto",
        "proto/kv.proto",
        "proto/lease.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
