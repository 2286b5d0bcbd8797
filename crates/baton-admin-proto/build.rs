fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // For gRPC server reflection.
        .file_descriptor_set_path(out.join("admin_descriptor.bin"))
        // `batonctl --json` prints the replies as they are.
        .type_attribute(".baton.admin.v1", "#[derive(serde::Serialize)]")
        .field_attribute(
            ".baton.admin.v1.Message.body",
            "#[serde(serialize_with = \"crate::body_as_text\")]",
        )
        .compile_with_config(config, &["../../proto/admin.proto"], &["../../proto"])?;
    println!("cargo:rerun-if-changed=../../proto/admin.proto");
    Ok(())
}
