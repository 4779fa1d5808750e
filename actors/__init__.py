"""Ray actors of scope-ray: rollout workers (vLLM), the teacher server, and the
learner-side weight push to the rollout workers. Pure logic lives in ``scope_ray``;
these modules only own processes, engines and queues."""
