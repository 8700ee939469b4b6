from gateway.app.cli import main

main()
