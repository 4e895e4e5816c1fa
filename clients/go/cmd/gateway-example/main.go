// Command gateway-example calls LLM Gateway from Go: it authenticates with a bearer
// token, calls Chat, streams StreamChat to stdout, and decodes the google.rpc details
// (ErrorInfo, RetryInfo, BadRequest) of a failed call.
//
//	LLM_GATEWAY_TOKEN=$(make token) gateway-example -target localhost:50051 -model mock "Hello"
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	gw "llmgateway/clients/go/llmgatewayv1"
)

func main() {
	target := flag.String("target", "localhost:50051", "the gateway's address")
	model := flag.String("model", "mock", "the model alias")
	mode := flag.String("mode", "both", "chat, stream or both")
	tlsOn := flag.Bool("tls", false, "use TLS (the system's roots, or -ca)")
	caFile := flag.String("ca", "", "a PEM file of the CA that signed the gateway's certificate")
	timeout := flag.Duration("timeout", 30*time.Second, "the deadline of each call")
	flag.Parse()
	prompt := strings.Join(flag.Args(), " ")
	if prompt == "" {
		prompt = "Hello from Go"
	}
	os.Exit(run(*target, *model, *mode, prompt, *tlsOn, *caFile, *timeout))
}

func run(target, model, mode, prompt string, tlsOn bool, caFile string, timeout time.Duration) int {
	security, err := transportOption(tlsOn, caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	conn, err := grpc.Dial(target, security)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	defer conn.Close()
	client := gw.NewProviderServiceClient(conn)
	request := &gw.ChatRequest{
		Model: model,
		Messages: []*gw.Message{{
			Role:  gw.Role_ROLE_USER,
			Parts: []*gw.Part{{Kind: &gw.Part_Text{Text: prompt}}},
		}},
	}
	if mode == "chat" || mode == "both" {
		if err := chat(client, request, timeout); err != nil {
			return report(err)
		}
	}
	if mode == "stream" || mode == "both" {
		if err := stream(client, request, timeout); err != nil {
			return report(err)
		}
	}
	return 0
}

// withToken puts the bearer token from LLM_GATEWAY_TOKEN on the call.
func withToken(ctx context.Context) context.Context {
	if token := os.Getenv("LLM_GATEWAY_TOKEN"); token != "" {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx
}

func chat(client gw.ProviderServiceClient, request *gw.ChatRequest, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(withToken(context.Background()), timeout)
	defer cancel()
	response, err := client.Chat(ctx, request)
	if err != nil {
		return err
	}
	var text strings.Builder
	for _, part := range response.GetMessage().GetParts() {
		text.WriteString(part.GetText())
	}
	fmt.Printf("chat: %s\n", text.String())
	usage := response.GetUsage()
	fmt.Printf("chat route: provider=%s attempts=%d tokens=%d+%d finish=%s\n",
		response.GetRoute().GetProvider(), response.GetRoute().GetAttempts(),
		usage.GetInputTokens(), usage.GetOutputTokens(), response.GetFinishReason())
	return nil
}

func stream(client gw.ProviderServiceClient, request *gw.ChatRequest, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(withToken(context.Background()), timeout)
	defer cancel()
	chunks, err := client.StreamChat(ctx, request)
	if err != nil {
		return err
	}
	fmt.Print("stream: ")
	count := 0
	var finish gw.FinishReason
	for {
		chunk, err := chunks.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Println()
			return err
		}
		count++
		fmt.Print(chunk.GetTextDelta())
		if chunk.GetFinishReason() != gw.FinishReason_FINISH_REASON_UNSPECIFIED {
			finish = chunk.GetFinishReason()
		}
	}
	fmt.Printf("\nstream end: chunks=%d finish=%s\n", count, finish)
	return nil
}

// report prints the status and its google.rpc details, and returns the exit code.
func report(err error) int {
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "error: %s: %s\n", st.Code(), st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			fmt.Fprintf(os.Stderr, "reason: %s (domain %s)\n", d.GetReason(), d.GetDomain())
		case *errdetails.RetryInfo:
			delay := d.GetRetryDelay()
			after := time.Duration(delay.GetSeconds())*time.Second + time.Duration(delay.GetNanos())
			fmt.Fprintf(os.Stderr, "retry after: %s\n", after)
		case *errdetails.BadRequest:
			for _, violation := range d.GetFieldViolations() {
				fmt.Fprintf(os.Stderr, "field %s: %s\n", violation.GetField(), violation.GetDescription())
			}
		case *errdetails.QuotaFailure:
			for _, violation := range d.GetViolations() {
				fmt.Fprintf(os.Stderr, "quota %s: %s\n", violation.GetSubject(), violation.GetDescription())
			}
		}
	}
	return 1
}

// transportOption is TLS with -ca or -tls, plaintext HTTP/2 otherwise (a gateway on
// loopback or inside a mesh).
func transportOption(tlsOn bool, caFile string) (grpc.DialOption, error) {
	if caFile != "" {
		creds, err := credentials.NewClientTLSFromFile(caFile, "")
		if err != nil {
			return nil, err
		}
		return grpc.WithTransportCredentials(creds), nil
	}
	if tlsOn {
		return grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(nil, "")), nil
	}
	return grpc.WithInsecure(), nil
}
