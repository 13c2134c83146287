//! Every Action's body decoder on arbitrary bytes (the first byte picks the Action): each
//! input is accepted or refused with an API error (JsonParsingError or InvalidParam);
//! nothing panics or recurses deeply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagcast::actions::{Action, Rules, parse_only};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let action = Action::ALL[usize::from(pick) % Action::ALL.len()];
    if let Err(e) = parse_only(action, body, &Rules::default()) {
        let code = e.code.wire().1;
        assert!(
            code == "JsonParsingError" || code == "InvalidParam",
            "{}: unexpected {code}",
            action.name()
        );
    }
});
