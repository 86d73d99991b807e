using FlashAttn.Cli;

return await CliApp.Build().Parse(args).InvokeAsync();
