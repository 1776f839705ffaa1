"""First-party factory plugins; they register through the same hooks a third party uses."""
