"""What methods are built from: the method contract, TRL glue, token views and the shared DPO, GRPO and
PPO machinery. Methods import these bases, never each other."""
