//! `taper serve BUNDLE`: verifies the bundle, then serves it until SIGTERM/SIGINT
//! ([`crate::serve`]).

use std::time::Duration;

use crate::cli::args::ServeArgs;
use crate::cli::printer::Printer;
use crate::cli::ExitStatus;
use crate::ml::DeviceChoice;
use crate::serve::{BatchConfig, ServeConfig};
use crate::stages::bundle::Bundle;

pub fn run(args: &ServeArgs, printer: &Printer) -> ExitStatus {
    let bundle = match Bundle::open(&args.bundle, DeviceChoice::Auto, args.precision) {
        Ok(bundle) => bundle,
        Err(error) => {
            printer.diagnostic(error);
            return ExitStatus::Error;
        }
    };
    let config = ServeConfig {
        batch: BatchConfig {
            max_batch_tokens: args.max_batch_tokens as usize,
            max_wait: Duration::from_millis(args.max_wait_ms),
        },
        max_concurrent: args.max_concurrent as usize,
        max_inputs: args.max_client_batch_size as usize,
        request_timeout: args.request_timeout,
        api_key: args.api_key.clone(),
        ..ServeConfig::default()
    };
    let labels = bundle.labels().join(", ");
    let device = format!("{} ({})", bundle.device_name(), bundle.precision().as_str());
    let digest = bundle.digest().short();
    let address = format!("{}:{}", args.host, args.port);
    let served = crate::serve::run(bundle, config, &address, |bound| {
        printer.status(&format!(
            "serving bundle {digest} ({labels}) on {device} at http://{bound}"
        ));
    });
    match served {
        Ok(()) => {
            printer.status("stopped");
            ExitStatus::Success
        }
        Err(error) => {
            printer.diagnostic(error);
            ExitStatus::Error
        }
    }
}
