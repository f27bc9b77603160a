//! A listener that parses the event's object JSON and reads a few fields: the benchmarks' "real work".
//!
//! The same work is done natively by the host benchmark's baseline, so the two can be compared.

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

fn parse(ev: Event) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(&ev.object).map_err(|e| format!("object is not JSON: {e}"))?;
    let replicas = value
        .pointer("/spec/replicas")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    let containers = value
        .pointer("/spec/template/spec/containers")
        .and_then(serde_json::Value::as_array)
        .map_or(0, Vec::len);
    if replicas < 0 || containers > 1_000 {
        return Err(format!(
            "implausible object: replicas={replicas} containers={containers}"
        ));
    }
    Ok(())
}

struct JsonParse;

impl Guest for JsonParse {
    fn create(ev: Event) -> Result<(), String> {
        parse(ev)
    }

    fn update(ev: Event) -> Result<(), String> {
        parse(ev)
    }

    fn delete(ev: Event) -> Result<(), String> {
        parse(ev)
    }

    fn error(_err: WatchError) -> Result<(), String> {
        Ok(())
    }

    fn rollback(_ev: Event) {}
}

export!(JsonParse);
