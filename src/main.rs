//! The `flashcoupon` binary: parse the command line, run it.

#[tokio::main]
async fn main() {
    if let Err(err) = flashcoupon::cli::run().await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
