fn main() {
    std::process::exit(datamesh::cli::main());
}
