"""What reads run directories: evaluation, tables and plots, exports for judges, token inspection."""
