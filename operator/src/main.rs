use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Flags first: `--log-format` may come from the config directory.
    let (args, loaded) = axoneme_config::parse::<axoneme_operator::Args>();
    let format = args.log.log_format;
    axoneme_config::logging::init(format);
    if let Some(line) = loaded.log_line() {
        tracing::info!("{line}");
    }
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        on_signal.cancel();
    });
    match axoneme_operator::run(args, cancel).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            axoneme_config::logging::fatal(format, "axoneme-operator", &format_args!("{e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}
