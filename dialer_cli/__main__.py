from dialer_cli.cli import main

main()
