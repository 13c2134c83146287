//! The RequestId a client is given finds every log line its request caused, including the
//! cause of a 500 that the client is not told; and a log nobody reads holds up no request.

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_cause_of_a_500_is_logged_with_the_request_id_the_client_got() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("data"));
    let server = ChildServer::spawn_logged(dir.path(), &config, "info");
    register(&server.client(), APP, &[7]).await;
    // A row the API could never have written: Ext that is not a JSON object. The next
    // start builds its state from the rows and finds it.
    run_sql(
        &config,
        &format!("UPDATE users SET ext = 'not json' WHERE app_id = {APP} AND user_id = 7"),
    );
    assert!(server.terminate().success());
    let _ = std::fs::remove_file(
        config
            .data_dir
            .join(tagcast::store::embedded::SNAPSHOT_FILE),
    );
    let server = ChildServer::spawn_logged(dir.path(), &config, "info");
    let c = server.client();
    let a = get_users(&c, &[7]).await;
    let v = assert_error(&a, 500, "InternalError");
    let request_id = v["ResponseMetadata"]["RequestId"].as_str().unwrap();
    assert_eq!(
        a.headers.get("x-request-id").unwrap().to_str().unwrap(),
        request_id
    );
    // The request line and the cause: both carry the id.
    server.wait_for_log("code=\"InternalError\"").await;
    let lines = server.log_lines_with(request_id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("store failure") && l.contains("ext")),
        "no ERROR line with the cause for {request_id}: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("code=\"InternalError\"")),
        "{lines:?}"
    );
    // The message to the client names no internals.
    assert!(
        !v["ResponseMetadata"]["Error"]["Message"]
            .as_str()
            .unwrap()
            .contains("ext"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stderr_nobody_reads_holds_up_no_request_and_dropped_lines_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("data"));
    let server = ChildServer::spawn_stalled_log(dir.path(), &config);
    // Each answer logs one request line: more than the pipe (64 KiB) and the log's queue
    // (tagcast::logging::QUEUE_LINES) hold together. With a blocking writer the workers
    // would stop at the first full pipe and these requests would never be answered.
    let requests = tagcast::logging::QUEUE_LINES + 20_000;
    let http = http_client();
    let url = format!(
        "{}/?Action=BatchGetUser&Version={}",
        server.endpoint,
        tagcast::api::VERSION
    );
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                for _ in (t..requests).step_by(16) {
                    // Unsigned: refused at once, and logged like any request.
                    let status = http.post(&url).send().await.unwrap().status();
                    assert_eq!(status, 401);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = metrics_at(&server.endpoint).await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tagcast_log_lines_dropped_total "))
        .unwrap_or_else(|| panic!("no tagcast_log_lines_dropped_total in {metrics}"))
        .parse()
        .unwrap();
    assert!(
        dropped > 0,
        "{requests} lines into a stalled stderr, none dropped"
    );
    assert!(dropped < requests as u64, "{dropped} of {requests} dropped");
}
