"""The PPO loop split by stage (rollout, scoring, advantages, update, checkpoint, loop), shared by
PPO, MA-PPO and RTO; `config` holds its settings and conventions."""
