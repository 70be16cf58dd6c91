//! What a child of the lab inherits: not the recording variables of the shell that runs
//! `nb-bench`, and, with pinning on, the CPU of its role.
//!
//! One test in its own binary: it sets variables in this process's environment, which no
//! other thread may be reading at the time.

use std::process::Command;

use nb_lab::lab::procs::{self, ChildGuard, Pinning, Role, TempDir};

#[test]
fn children_lose_the_recording_variables_and_run_on_their_cpu() {
    std::env::set_var("DATABASE_URL", "postgres://lab@127.0.0.1/should-not-leak");
    std::env::set_var("NEURABALANCER_ADMIN_TOKEN", "secret");
    std::env::set_var("NEURABALANCER_SOMETHING_NEW", "1");
    std::env::set_var("NB_LAB_PLAIN", "kept");

    let pinning = procs::pin_lab(true).clone();
    eprintln!("{}", procs::pinning_description());
    let dir = TempDir::new("nb-lab-env").expect("temp dir");
    for (role, name) in [(Role::Proxy, "proxy"), (Role::Fleet, "fleet")] {
        let log = dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "env; grep Cpus_allowed_list /proc/self/status"]);
        let text = ChildGuard::spawn_as(role, name, &mut cmd, &log)
            .expect("spawn")
            .output();
        assert!(text.contains("NB_LAB_PLAIN=kept"), "{text}");
        assert!(!text.contains("DATABASE_URL"), "{name}: {text}");
        assert!(!text.contains("NEURABALANCER_"), "{name}: {text}");
        if let Pinning::On {
            proxy_cpu, load_cpu, ..
        } = &pinning
        {
            let cpu = if role == Role::Proxy { proxy_cpu } else { load_cpu };
            assert!(
                text.contains(&format!("Cpus_allowed_list:\t{cpu}\n")),
                "{name} on CPU {cpu}: {text}"
            );
        }
    }
    if let Pinning::On { load_cpu, .. } = &pinning {
        // This process (the load generator's place) is pinned too, every thread of it.
        assert_eq!(procs::allowed_cpus(), [*load_cpu]);
    }
}
