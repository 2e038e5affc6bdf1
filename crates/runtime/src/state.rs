//! The sandbox lifecycle as an exhaustive transition function: adding a
//! state forces every transition into and out of it to be decided here.

use hull_api::SandboxState::{self, *};

/// May a sandbox go from `from` to `to`?
pub fn valid_transition(from: SandboxState, to: SandboxState) -> bool {
    match (from, to) {
        (Creating, Running) | (Creating, Failed) | (Creating, Stopping) => true,
        (Creating, Creating) | (Creating, Paused) | (Creating, Stopped) => false,
        (Running, Paused) | (Running, Stopping) | (Running, Failed) => true,
        (Running, Creating) | (Running, Running) | (Running, Stopped) => false,
        (Paused, Running) | (Paused, Stopping) | (Paused, Failed) => true,
        (Paused, Creating) | (Paused, Paused) | (Paused, Stopped) => false,
        (Stopping, Stopped) | (Stopping, Failed) => true,
        (Stopping, Creating) | (Stopping, Running) | (Stopping, Paused) | (Stopping, Stopping) => {
            false
        }
        // A stopped sandbox is started again by a rollback.
        (Stopped, Stopping) | (Stopped, Creating) => true,
        (Stopped, Running) | (Stopped, Paused) | (Stopped, Stopped) | (Stopped, Failed) => false,
        (Failed, Stopping) => true,
        (Failed, Creating)
        | (Failed, Running)
        | (Failed, Paused)
        | (Failed, Stopped)
        | (Failed, Failed) => false,
    }
}

/// A person-readable reason why `op` is refused in `state`.
pub fn refusal(id: &str, state: SandboxState, op: &str) -> String {
    let hint = match state {
        Paused => ": resume it first",
        Creating => ": it is still being created",
        Stopping | Stopped => ": it has been stopped",
        Failed => ": it failed; inspect it for the reason, then remove it",
        Running => "",
    };
    format!("cannot {op} sandbox {id}: it is {state}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [SandboxState; 6] = [Creating, Running, Paused, Stopping, Stopped, Failed];

    #[test]
    fn no_self_transitions_and_terminal_states() {
        for s in ALL {
            assert!(!valid_transition(s, s), "{s} -> {s}");
            // Only a stopped sandbox is created again (a rollback restarts it).
            assert_eq!(
                valid_transition(s, Creating),
                s == Stopped,
                "{s} -> creating"
            );
        }
        assert!(valid_transition(Running, Paused));
        assert!(valid_transition(Paused, Running));
        assert!(!valid_transition(Stopped, Running));
        assert!(!valid_transition(Failed, Running));
        // Everything can be torn down.
        for s in ALL {
            assert!(
                s == Stopping || valid_transition(s, Stopping),
                "{s} -> stopping"
            );
        }
    }
}
