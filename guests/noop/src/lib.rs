//! A listener that does nothing: measures pure dispatch overhead in the benchmarks.

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

struct Noop;

impl Guest for Noop {
    fn create(_ev: Event) -> Result<(), String> {
        Ok(())
    }

    fn update(_ev: Event) -> Result<(), String> {
        Ok(())
    }

    fn delete(_ev: Event) -> Result<(), String> {
        Ok(())
    }

    fn error(_err: WatchError) -> Result<(), String> {
        Ok(())
    }

    fn rollback(_ev: Event) {}
}

export!(Noop);
