//! Generates the agentplane.v1 messages and services from `agentplane/v1/*.proto`, and the
//! file descriptor set that server reflection serves.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "agentplane/v1/common.proto",
    "agentplane/v1/workspace.proto",
    "agentplane/v1/agent.proto",
    "agentplane/v1/task.proto",
    "agentplane/v1/event.proto",
    "agentplane/v1/worker.proto",
    "agentplane/v1/identity.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .file_descriptor_set_path(out_dir.join("agentplane_descriptor.bin"))
        .compile_protos(PROTOS, &["."])?;
    Ok(())
}
