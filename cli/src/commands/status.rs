//! `waxseal status`.

use anyhow::Result;

use super::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut client = ctx.connect()?;
    let status = client.status()?;
    if ctx.json {
        return ctx.print_json(&status);
    }
    outln!("agent:   {} (protocol {})", status.agent, status.version);
    outln!("socket:  {}", ctx.socket.display());
    outln!("keys:    {}", status.keys);
    if let Some(a) = &status.audit {
        outln!(
            "audit:   {}; {} records, {} syncs for {} waiting signatures since start",
            a.durability,
            a.appended,
            a.syncs,
            a.waited
        );
    }
    if status.devices.is_empty() {
        outln!("devices: none configured (add [[device]] entries to the config; see README)");
    }
    for d in &status.devices {
        let state = if d.present { "present" } else { "absent" };
        outln!("device:  {} ({}) {state}, {} keys", d.name, d.kind, d.keys);
        if !d.detail.is_empty() {
            outln!("         {}", d.detail);
        }
        if let Some(e) = &d.error {
            outln!("         error: {e}");
        }
    }
    Ok(())
}
