use anvil_cli::*;
use clap::{Parser, Subcommand};
#[derive(Parser)]
/// Anvil top.
#[command(name = "anvil")]
struct Cli { #[command(flatten)] g: GlobalOpts, #[command(subcommand)] cmd: Cmd }
#[derive(Subcommand)]
enum Cmd { /// Machines doc.
 #[command(subcommand)] Machine(MachineCmd), #[command(subcommand)] Token(TokenCmd), #[command(subcommand)] User(UserCmd) }
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd { Cmd::Machine(c) => run_machine(&cli.g, c).await, Cmd::Token(c) => run_token(&cli.g, c).await, Cmd::User(c) => run_user(&cli.g, c).await };
    match r { Ok(()) => 0.into(), Err(e) => { eprintln!("anvil: {e}"); e.exit_code().into() } }
}
