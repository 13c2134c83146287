//! The RequestId a client is given finds every log line its request caused, including the
//! cause of a 500 that the client is not told.

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_cause_of_a_500_is_logged_with_the_request_id_the_client_got() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir.path().join("data"));
    let server = ChildServer::spawn_logged(dir.path(), &config, "info");
    let c = server.client();
    register(&c, APP, &[7]).await;
    // A row the API could never have written: Ext that is not a JSON object.
    run_sql(
        &config,
        &format!("UPDATE users SET ext = 'not json' WHERE app_id = {APP} AND user_id = 7"),
    );
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
