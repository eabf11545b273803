//! Shared by the benchmark programs.

/// Peak resident set size of this process so far (Linux `VmHWM`), MiB; 0 where unknown.
pub fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// A Flight SQL client of `server` (plain HTTP/2 on its Flight port).
#[allow(dead_code)] // Not every bench that includes this module speaks Flight SQL.
pub async fn flight_client(
    server: &streamhouse::Server,
) -> arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.flight_addr()))
        .expect("url")
        .connect()
        .await
        .expect("flight connects");
    arrow_flight::sql::client::FlightSqlServiceClient::new(channel)
}
