from mlconnect.cli.main import main

main()
