"""One actor (or a few) in a real Thespian system, with the test playing its peers."""
