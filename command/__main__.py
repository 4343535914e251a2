from kafkashake.cli import main

main()
