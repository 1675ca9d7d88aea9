"""The design document's worker snippets, as written there, run against a registry.

    python3 tests/python/design_worker.py http://127.0.0.1:8003/api user_123

Registers with `_register_with_dals`, sends three heartbeats with `_send_heartbeat`, and prints
the model and serial numbers. Exits non-zero when registration did not succeed.
"""
import sys

import requests

API_BASE = sys.argv[1]
WORKER_NAME = "Josephine"
WORKER_PORT = 8080


class Worker:
    def __init__(self, user_id):
        self.user_id = user_id
        self.model_number = None
        self.serial_number = None

    # --- verbatim from the design document ---
    def _register_with_dals(self) -> None:
        """Self-register with DALS Worker Registry."""
        try:
            registration_data = {
                "name": f"{WORKER_NAME}-{self.user_id}",
                "worker_type": "truemark",  # Must match MODEL_CATALOG key
                "api_url": f"http://localhost:{WORKER_PORT}",
                "user_id": self.user_id
            }

            response = requests.post(
                f"{API_BASE}/workers/register",
                json=registration_data,
                timeout=5
            )

            if response.status_code == 200:
                reg_data = response.json()
                self.model_number = reg_data.get("model_number")
                self.serial_number = reg_data.get("serial_number")
                print(f"✓ Registered: {self.model_number} - {self.serial_number}")
        except Exception as e:
            print(f"⚠ Registration failed: {e}")

    def _send_heartbeat(self) -> None:
        """Send heartbeat to DALS registry."""
        try:
            requests.post(
                f"{API_BASE}/workers/heartbeat",
                json={"worker_name": f"{WORKER_NAME}-{self.user_id}"},
                timeout=3
            )
        except:  # noqa: E722
            pass  # Silent fail - heartbeat is non-critical
    # --- end of the design document's code ---


if __name__ == "__main__":
    worker = Worker(sys.argv[2])
    worker._register_with_dals()
    for _ in range(3):
        worker._send_heartbeat()
    sys.exit(0 if worker.serial_number else 1)
