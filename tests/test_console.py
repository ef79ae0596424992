"""A closed stdout never ends a job: after protect_output() the process goes on and exits 0."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run_into_closed_pipe(protect: bool) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import sys
        from pgps_data.console import protect_output
        if {protect}:
            protect_output()
        for i in range(200000):
            print("result line", i)
        sys.stderr.write("job went on\\n")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.read(10)  # the reader takes a little, then goes away (like `| head -c 10`)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)


def test_a_closed_stdout_does_not_end_the_job() -> None:
    done = _run_into_closed_pipe(protect=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().strip() == "job went on"


def test_a_closed_stderr_does_not_end_the_job_either() -> None:  # `2>&1 | head`
    code = textwrap.dedent("""
        import sys
        from pgps_data.console import progress_console, protect_output
        protect_output()
        console = progress_console()
        for i in range(20000):
            console.print("progress", i)
        sys.stdout.write("job went on\\n")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stderr.read(10)
    proc.stderr.close()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.decode().strip() == "job went on"


def test_without_protection_the_same_job_dies() -> None:  # the probe the guard answers
    died = _run_into_closed_pipe(protect=False)
    assert died.returncode != 0 and b"job went on" not in died.stderr
    assert b"BrokenPipeError" in died.stderr
